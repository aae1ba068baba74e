"""`python -m examples.rag_agent [QUESTION ...]` (or `make example-rag`) against `make run`'s stack."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import uuid
from pathlib import Path

import openai

from .app import DEFAULT_QUESTIONS, Options, report, run_agent
from .settings import Harness, SettingsError

MAX_QUESTIONS = 20
MAX_QUESTION_CHARS = 2000


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m examples.rag_agent", description=__doc__)
    p.add_argument("questions", nargs="*", help="questions to answer (default: three sample questions)")
    p.add_argument(
        "--env", type=Path, default=Path(".harness/env"), help="the stack's env file (.harness/env)"
    )
    p.add_argument("--agent", default="policy-rag", help="the agent whose certificate is used (policy-rag)")
    p.add_argument(
        "--user", help="the user the agent acts for (a token in .harness/tokens/; default HARNESS_TOKEN)"
    )
    p.add_argument("--session", help="session id for the audit lineage (default: a new rag-... id)")
    p.add_argument("--qdrant", default=Options.qdrant, help="index folder, :memory:, or a Qdrant server URL")
    p.add_argument("--reindex", action="store_true", help="embed and store the documents again")
    p.add_argument("--model", default=Options.model, help="the chat model (a catalog name)")
    p.add_argument("--embedding-model", default=Options.embedding_model, help="the embedding model")
    p.add_argument("--max-tokens", type=int, default=Options.max_tokens, help="answer length limit (1-2048)")
    p.add_argument("--json", action="store_true", help="print the run as JSON")
    args = p.parse_args(argv)
    questions = args.questions or list(DEFAULT_QUESTIONS)
    if len(questions) > MAX_QUESTIONS or any(not q.strip() or len(q) > MAX_QUESTION_CHARS for q in questions):
        p.error(f"give 1-{MAX_QUESTIONS} non-empty questions of at most {MAX_QUESTION_CHARS} characters")
    if not 1 <= args.max_tokens <= 2048:
        p.error("--max-tokens must be 1-2048")
    args.questions = questions
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    session = args.session or f"rag-{uuid.uuid4().hex[:12]}"
    try:
        harness = Harness.load(args.env, args.agent, args.user, session)
    except SettingsError as exc:
        print(f"rag_agent: {exc}", file=sys.stderr)
        return 2
    options = Options(args.model, args.embedding_model, args.qdrant, args.reindex, args.max_tokens)
    try:
        run = asyncio.run(run_agent(harness, args.questions, options))
    except openai.APIStatusError as exc:  # the Harness's refusal, in the OpenAI error shape
        body = exc.body if isinstance(exc.body, dict) else {}
        print(
            f"rag_agent: the Harness answered {exc.status_code}: {body.get('message', exc.message)}",
            file=sys.stderr,
        )
        return 1
    except openai.APIConnectionError as exc:
        print(
            f"rag_agent: cannot reach {harness.openai_base_url} ({exc}); is `make run` up?", file=sys.stderr
        )
        return 1
    print(json.dumps(dataclasses.asdict(run), ensure_ascii=False, indent=2) if args.json else report(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
