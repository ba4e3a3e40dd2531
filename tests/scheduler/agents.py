"""A node's agent credential for scheduler tests: the token its boot callback would answer, and
the hash its registration hands over (provisioner/handoff/agent.py)."""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.handoff.agent import agent_hash, new_agent_token


@dataclass(frozen=True)
class AgentCredential:
    token: str

    @classmethod
    def new(cls) -> AgentCredential:
        return cls(new_agent_token())

    @property
    def hash(self) -> str:
        return agent_hash(self.token)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}
