"""gRPC face of the registry: checks who may call, converts proto <-> domain, calls the store.

Store and policy calls are synchronous (SQLAlchemy, casbin) and run in worker threads so the
event loop keeps serving. Access: mutations need an admin user (JWT role "admin") or a
Harness service identity (mTLS cert, e.g. the stack's seeder); reads need an authenticated
caller, and one that is neither reads only the projects it acts in (scope.py), while the model
and tool catalogs and the JWT settings are shared; Watch, which streams everything, needs
admin or service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb
from harness.registry.v1 import registry_pb2_grpc as pb_grpc

from services.common.context import BOUND_AGENT, Identity, current_identity
from services.common.errors import PermissionDenied, Unauthenticated
from services.registry import convert as c
from services.registry import domain as d
from services.registry import limits
from services.registry.policy import Policy
from services.registry.scope import Scope, key_holder, scope_of, visible_agent
from services.registry.store import Store
from services.registry.watch import WatchHub

T = TypeVar("T")
SERVICE = pb.DESCRIPTOR.services_by_name["Registry"]
ROUTER_SERVICE = "router"  # the only caller that may read a secret's value


def _caller() -> Identity:
    ident = current_identity()
    if not (ident.user or ident.agent or ident.service):
        raise Unauthenticated(
            "the registry needs an authenticated caller: send 'authorization: Bearer <jwt>', an "
            "x-api-key, or call with an agent/service certificate"
        )
    return ident


def _admin(rpc: str, why: str = "changes the registry") -> Identity:
    ident = _caller()
    if ident.is_admin or ident.service:
        return ident
    who = f"user {ident.user!r}" if ident.user else f"agent {ident.agent!r}"
    raise PermissionDenied(
        f"{rpc} {why} and needs the admin role or a Harness service certificate; {who} has "
        f"roles [{', '.join(ident.roles)}]; use an admin token"
    )


async def _run(fn: Callable[..., T], *args) -> T:
    return await asyncio.to_thread(fn, *args)


class RegistryServicer(pb_grpc.RegistryServicer):
    def __init__(
        self, store: Store, policy: Policy, trust_domain: str = "harness.local", hub: WatchHub | None = None
    ) -> None:
        self.store = store
        self.policy = policy
        self.trust_domain = trust_domain
        self.hub = hub or WatchHub(store)

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        """Registrar for `start_server`: adds this servicer, returns the service name."""
        pb_grpc.add_RegistryServicer_to_server(self, server)
        return (SERVICE.full_name,)

    async def resolve_api_key(self, secret: str) -> Identity:
        """ApiKeyResolver for the registry's own server (x-api-key callers).

        Global roles are not carried: a project-scoped key must not administer the registry.
        """
        key, user = await _run(self.store.authenticate_api_key, secret)
        return Identity(
            user=user.name, auth_method="api_key", project=key.project, claims={BOUND_AGENT: key.agent}
        )

    async def _scope(self) -> Scope:
        """The projects the authenticated caller reads (every one for admins and services)."""
        return await _run(scope_of, self.store, _caller())

    # --- tenancy -------------------------------------------------------------------------

    async def CreateTeam(self, request, context):
        """Creates a team; ALREADY_EXISTS if the name is taken."""
        _admin("CreateTeam")
        team = await _run(self.store.create_team, c.team_in(request.team))
        return pb.CreateTeamResponse(team=c.team_pb(team))

    async def ListTeams(self, request, context):
        """Lists teams by name, paged; a scoped caller sees the teams owning its projects."""
        scope = await self._scope()
        teams, nxt = await _run(self.store.list_teams, c.page_in(request.page), scope.projects)
        return pb.ListTeamsResponse(teams=[c.team_pb(t) for t in teams], page=c.page_out(nxt))

    async def CreateProject(self, request, context):
        """Creates a project in an existing team (NOT_FOUND names the missing team)."""
        _admin("CreateProject")
        project = await _run(self.store.create_project, c.project_in(request.project))
        return pb.CreateProjectResponse(project=c.project_pb(project))

    async def ListProjects(self, request, context):
        """Lists projects, optionally of one team; a scoped caller sees its own projects."""
        scope = await self._scope()
        projects, nxt = await _run(
            self.store.list_projects, request.team, c.page_in(request.page), scope.projects
        )
        return pb.ListProjectsResponse(projects=[c.project_pb(p) for p in projects], page=c.page_out(nxt))

    async def CreateUser(self, request, context):
        """Creates a user (name = JWT subject)."""
        _admin("CreateUser")
        user = await _run(self.store.create_user, c.user_in(request.user))
        return pb.CreateUserResponse(user=c.user_pb(user))

    async def GetUser(self, request, context):
        """Gets one user; NOT_FOUND names it. A non-admin user reads only their own record."""
        ident = _caller()
        if not (ident.is_admin or ident.service or (ident.user and ident.user == request.name)):
            # A user's email, roles and limits are theirs and the admins' to read, not every caller's.
            raise PermissionDenied(
                "only admins read other users' records; ask for your own (name = your user name)"
            )
        return pb.GetUserResponse(user=c.user_pb(await _run(self.store.get_user, request.name)))

    async def SetUserLimits(self, request, context):
        """Sets a user's rpm/tpm limits (0 = unlimited); NOT_FOUND for an unknown user."""
        _admin("SetUserLimits")
        user = await _run(self.store.set_user_limits, request.user, request.rpm_limit, request.tpm_limit)
        return pb.SetUserLimitsResponse(user=c.user_pb(user))

    async def ListUsers(self, request, context):
        """Lists users, optionally of one team (admins: it names every user's email and roles)."""
        _admin("ListUsers", "names every user's email and roles")
        users, nxt = await _run(self.store.list_users, request.team, c.page_in(request.page))
        return pb.ListUsersResponse(users=[c.user_pb(u) for u in users], page=c.page_out(nxt))

    # --- API keys ------------------------------------------------------------------------

    async def CreateApiKey(self, request, context):
        """Creates a project-scoped key; the secret is returned only here."""
        _admin("CreateApiKey")
        key, secret = await _run(
            self.store.create_api_key,
            request.user,
            request.project,
            request.description,
            c.from_ts(request, "expire_time"),
            request.agent,
        )
        return pb.CreateApiKeyResponse(key=c.api_key_pb(key), secret=secret)

    async def ListApiKeys(self, request, context):
        """Lists key metadata (never secrets); a non-admin user sees only their own keys, in the
        projects they act in."""
        ident = _caller()
        user = key_holder(ident, request.user)
        scope = await _run(scope_of, self.store, ident)
        keys, nxt = await _run(self.store.list_api_keys, user, c.page_in(request.page), scope.projects)
        return pb.ListApiKeysResponse(keys=[c.api_key_pb(k) for k in keys], page=c.page_out(nxt))

    async def RevokeApiKey(self, request, context):
        """Revokes a key at once; revoking twice keeps the first revoke_time."""
        _admin("RevokeApiKey")
        return pb.RevokeApiKeyResponse(key=c.api_key_pb(await _run(self.store.revoke_api_key, request.id)))

    async def AuthenticateApiKey(self, request, context):
        """Resolves a secret to its key and user for routers; UNAUTHENTICATED if not usable."""
        _admin("AuthenticateApiKey", "is for routers")
        key, user = await _run(self.store.authenticate_api_key, request.secret)
        return pb.AuthenticateApiKeyResponse(key=c.api_key_pb(key), user=c.user_pb(user))

    # --- agents --------------------------------------------------------------------------

    async def CreateAgent(self, request, context):
        """Registers an agent in state REGISTERED; spiffe_id defaults from the trust domain."""
        _admin("CreateAgent")
        agent = await _run(self.store.create_agent, c.agent_in(request.agent), self.trust_domain)
        return pb.CreateAgentResponse(agent=c.agent_pb(agent))

    async def GetAgent(self, request, context):
        """Gets an agent with versions and traffic; NOT_FOUND names it (for a scoped caller, also
        when the agent is another project's)."""
        scope = await self._scope()
        return pb.GetAgentResponse(
            agent=c.agent_pb(await _run(visible_agent, self.store, request.name, scope))
        )

    async def ListAgents(self, request, context):
        """Lists agents filtered by project, type and state, within the caller's projects."""
        scope = await self._scope()
        agents, nxt = await _run(
            self.store.list_agents,
            request.project,
            c.enum_to_short(common_pb2.AgentType, request.type),
            c.enum_to_short(common_pb2.AgentState, request.state),
            c.page_in(request.page),
            scope.only(request.project, "ListAgentsRequest.project"),
        )
        return pb.ListAgentsResponse(agents=[c.agent_pb(a) for a in agents], page=c.page_out(nxt))

    async def CreateAgentVersion(self, request, context):
        """Adds a version; its models and tools must be in the catalog (FAILED_PRECONDITION)."""
        _admin("CreateAgentVersion")
        agent = await _run(self.store.create_agent_version, request.agent, c.version_in(request.version))
        return pb.CreateAgentVersionResponse(agent=c.agent_pb(agent))

    async def SetAgentState(self, request, context):
        """Moves an agent along its lifecycle; FAILED_PRECONDITION lists the legal next states."""
        _admin("SetAgentState")
        state = c.enum_to_short(common_pb2.AgentState, request.state)
        agent = await _run(self.store.set_agent_state, request.agent, state)
        return pb.SetAgentStateResponse(agent=c.agent_pb(agent))

    async def SetAgentApiKeyAuth(self, request, context):
        """Allows or stops agent-bound API keys for an agent."""
        _admin("SetAgentApiKeyAuth")
        agent = await _run(self.store.set_agent_api_key_auth, request.agent, request.enabled)
        return pb.SetAgentApiKeyAuthResponse(agent=c.agent_pb(agent))

    async def SetTrafficSplit(self, request, context):
        """Replaces the split (weights sum to 100, versions exist); keeps the old one."""
        _admin("SetTrafficSplit")
        weights = [d.TrafficWeight(w.version, w.weight) for w in request.traffic]
        agent = await _run(self.store.set_traffic_split, request.agent, weights)
        return pb.SetTrafficSplitResponse(agent=c.agent_pb(agent))

    async def RollbackTrafficSplit(self, request, context):
        """Restores the previous split; FAILED_PRECONDITION if there is none."""
        _admin("RollbackTrafficSplit")
        agent = await _run(self.store.rollback_traffic_split, request.agent)
        return pb.RollbackTrafficSplitResponse(agent=c.agent_pb(agent))

    # --- catalogs ------------------------------------------------------------------------

    async def RegisterModel(self, request, context):
        """Adds a model to the catalog (triton_model defaults to the name)."""
        _admin("RegisterModel")
        model = await _run(self.store.register_model, c.model_in(request.model))
        return pb.RegisterModelResponse(model=c.model_pb(model))

    async def ListModels(self, request, context):
        """Lists catalog models (shared by every project: any authenticated caller)."""
        _caller()
        models, nxt = await _run(self.store.list_models, c.page_in(request.page))
        return pb.ListModelsResponse(models=[c.model_pb(m) for m in models], page=c.page_out(nxt))

    async def RegisterTool(self, request, context):
        """Adds a tool version with its actions (each needs a risk class)."""
        _admin("RegisterTool")
        tool = await _run(self.store.register_tool, c.tool_in(request.tool))
        return pb.RegisterToolResponse(tool=c.tool_pb(tool))

    async def ListTools(self, request, context):
        """Lists catalog tools (shared by every project: any authenticated caller)."""
        _caller()
        tools, nxt = await _run(self.store.list_tools, c.page_in(request.page))
        return pb.ListToolsResponse(tools=[c.tool_pb(t) for t in tools], page=c.page_out(nxt))

    # --- policy --------------------------------------------------------------------------

    async def AddPolicy(self, request, context):
        """Adds a casbin rule or role assignment; added=False if it existed."""
        _admin("AddPolicy")
        return pb.AddPolicyResponse(added=await _run(self.policy.add, c.rule_in(request.rule)))

    async def RemovePolicy(self, request, context):
        """Removes a casbin rule or role assignment; removed=False if it did not exist."""
        _admin("RemovePolicy")
        return pb.RemovePolicyResponse(removed=await _run(self.policy.remove, c.rule_in(request.rule)))

    async def ListPolicies(self, request, context):
        """Lists rules then role assignments, optionally of one domain; a scoped caller gets
        those of its projects only ('*' rules are no project's)."""
        scope = await self._scope()
        scope.only(request.domain, "ListPoliciesRequest.domain")
        rules = scope.rules(await _run(self.policy.list, request.domain))
        return pb.ListPoliciesResponse(rules=[c.rule_pb(r) for r in rules])

    async def CheckAccess(self, request, context):
        """Decides subject/domain/object/action and names the rule that decided; a scoped
        caller asks only in its own projects."""
        scope = await self._scope()
        limits.check_query(
            subject=request.subject, domain=request.domain, object=request.object, action=request.action
        )
        if request.domain:  # an empty one is refused by the check, naming the field
            scope.need_project(request.domain, "CheckAccessRequest.domain")
        allowed, rule = await _run(
            self.policy.check, request.subject, request.domain, request.object, request.action
        )
        return pb.CheckAccessResponse(allowed=allowed, rule=rule)

    # --- deletions -----------------------------------------------------------------------

    async def DeleteTeam(self, request, context):
        """Deletes a team without projects or users (FAILED_PRECONDITION names them)."""
        _admin("DeleteTeam")
        await _run(self.store.delete_team, request.name)
        return pb.DeleteTeamResponse()

    async def DeleteProject(self, request, context):
        """Deletes a project no agent, API key or policy rule names."""
        _admin("DeleteProject")
        await _run(self.store.delete_project, request.name)
        return pb.DeleteProjectResponse()

    async def DeleteUser(self, request, context):
        """Deletes a user and its API keys; refused while a role assignment names the user."""
        _admin("DeleteUser")
        keys = await _run(self.store.delete_user, request.name)
        return pb.DeleteUserResponse(deleted_api_keys=keys)

    async def DeleteAgent(self, request, context):
        """Deletes a retired (or never started) agent."""
        _admin("DeleteAgent")
        await _run(self.store.delete_agent, request.name)
        return pb.DeleteAgentResponse()

    async def DeleteAgentVersion(self, request, context):
        """Deletes a version that has no traffic."""
        _admin("DeleteAgentVersion")
        agent = await _run(self.store.delete_agent_version, request.agent, request.version)
        return pb.DeleteAgentVersionResponse(agent=c.agent_pb(agent))

    async def DeleteModel(self, request, context):
        """Deletes a catalog model no agent version pins."""
        _admin("DeleteModel")
        await _run(self.store.delete_model, request.name)
        return pb.DeleteModelResponse()

    async def DeleteTool(self, request, context):
        """Deletes a catalog tool version no agent version calls."""
        _admin("DeleteTool")
        await _run(self.store.delete_tool, request.name, request.version)
        return pb.DeleteToolResponse()

    # --- JWT settings and watch ----------------------------------------------------------

    async def SetJwtSettings(self, request, context):
        """Replaces the JWT verification settings; INVALID_ARGUMENT names a bad field."""
        _admin("SetJwtSettings")
        settings = await _run(self.store.set_jwt_settings, c.jwt_in(request.settings))
        return pb.SetJwtSettingsResponse(settings=c.jwt_pb(settings))

    async def GetJwtSettings(self, request, context):
        """The JWT verification settings (public: issuer, audience, keys); NOT_FOUND until set."""
        _caller()
        return pb.GetJwtSettingsResponse(settings=c.jwt_pb(await _run(self.store.get_jwt_settings)))

    async def Watch(self, request, context):
        """Snapshot or catch-up deltas, then live deltas (see watch.py); resumable by revision."""
        _admin("Watch", "streams every registry entity (it is for routers)")
        async for batch in self.hub.watch(request.since_revision):
            yield c.watch_pb(batch)

    # --- secrets (tools' upstream credentials) --------------------------------------------

    async def SetSecret(self, request, context):
        """Stores a secret's value under its name; the answer has the name only."""
        _admin("SetSecret")
        info = await _run(self.store.set_secret, request.name, request.value)
        return pb.SetSecretResponse(secret=c.secret_pb(info))

    async def ListSecrets(self, request, context):
        """Names and when they were set; never values."""
        _admin("ListSecrets", "lists secrets")
        return pb.ListSecretsResponse(secrets=[c.secret_pb(s) for s in await _run(self.store.list_secrets)])

    async def DeleteSecret(self, request, context):
        """Deletes a secret no tool names."""
        _admin("DeleteSecret")
        await _run(self.store.delete_secret, request.name)
        return pb.DeleteSecretResponse()

    async def RevealSecret(self, request, context):
        """A secret's value, for the routers only (they send it to a tool's endpoint)."""
        ident = _caller()
        if ident.service != ROUTER_SERVICE:
            who = f"service {ident.service!r}" if ident.service else f"user {ident.user!r}" if ident.user else (
                f"agent {ident.agent!r}"
            )  # fmt: skip
            raise PermissionDenied(
                f"a secret's value is only given to the routers (the {ROUTER_SERVICE!r} service "
                f"certificate); {who} may set and list secrets (harness secrets set|list) but never read "
                "one back"
            )
        return pb.RevealSecretResponse(value=await _run(self.store.reveal_secret, request.name))
