"""A LangGraph RAG agent over a small policy corpus, wired through the Harness.

Ingest: chunk the documents, embed the chunks through the Harness (`POST /v1/embeddings`), keep
them in Qdrant (local mode on disk, or a Qdrant server). Per question: retrieve -> filter ->
rerank -> [a ledger lookup over MCP when the question names a ledger] -> generate (ChatOpenAI on
the Harness's OpenAI front door). Every call carries the agent's client certificate, the user's
token and one session id with a step id per call, so `harness audit lineage --session ID` shows
the whole run.
"""
