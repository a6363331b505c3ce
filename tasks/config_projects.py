"""The config file's agent sections: `projects` (workspaces), `agents` (headless Claude Code runs),
and the isolation a per-project server can be given.

A project is a git repository with a home host: its workspace is a clone under the host's
workspaces root, made on the first call for it there (workers/workspaces.py). Projects are named
in `projects.repos`, or by `projects.pattern` (a regex and a URL template with `{project}`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.config_base import Section

# A project id names a directory: one path segment, nothing that climbs or hides.
PROJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_project_id(project: object) -> str:
    """The project id if it is a safe path segment; ValueError naming the rule otherwise."""
    if not isinstance(project, str) or not PROJECT_ID.match(project) or project.endswith("."):
        raise ValueError(
            f"project id {project!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (it names the project's workspace directory)"
        )
    return project


class ProjectSpec(Section):
    git: str = Field(min_length=1, description="a URL or path git clone accepts")
    branch: str | None = Field(default=None, description="unset: the remote's default branch")


class ProjectPattern(Section):
    """Projects not named in `repos`: ids matching `match` clone `git` with `{project}` filled in."""

    match: str = Field(min_length=1)
    git: str = Field(min_length=1)

    @field_validator("match")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        return value

    @field_validator("git")
    @classmethod
    def _template(cls, value: str) -> str:
        if "{project}" not in value:
            raise ValueError("must contain {project}")
        return value


class ProjectsSection(Section):
    root: str | None = Field(
        default=None,
        description="workspaces root on this host (AGENTFUL_WORKSPACES; unset: <data dir>/workspaces)",
    )
    repos: dict[str, ProjectSpec] = Field(default_factory=dict)
    pattern: ProjectPattern | None = None

    @field_validator("repos")
    @classmethod
    def _ids(cls, value: dict[str, ProjectSpec]) -> dict[str, ProjectSpec]:
        for project in value:
            check_project_id(project)
        return value

    def source(self, project: str) -> ProjectSpec | None:
        """Where `project` is cloned from (None: the config names no such project)."""
        if project in self.repos:
            return self.repos[project]
        if self.pattern is not None and re.fullmatch(self.pattern.match, project):
            return ProjectSpec(git=self.pattern.git.replace("{project}", project))
        return None

    def names(self, project: str) -> bool:
        """Whether `project` is one of the config's projects (it has a workspace somewhere)."""
        return project in self.repos or (
            self.pattern is not None and re.fullmatch(self.pattern.match, project) is not None
        )


class IsolationSection(Section):
    """What a per-project process (a server session, an agent run) may reach."""

    network: bool = Field(default=True, description="false: its own empty network namespace (unshare -n)")
    user: str | None = Field(
        default=None, description="run as this OS user ({project} allowed); its workspace is made theirs"
    )


class BrainSection(Section):
    """The model behind `claude -p`: any Anthropic-compatible endpoint (GLM's, a proxy, a local one)."""

    base_url: str | None = Field(default=None, description="ANTHROPIC_BASE_URL (unset: Anthropic's)")
    token_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="env var holding the token"
    )
    model: str | None = Field(default=None, description="ANTHROPIC_MODEL")
    max_retries: int = Field(default=2, ge=0, le=10, description="Claude Code's retries of a failed request")
    request_timeout_s: float = Field(default=600.0, gt=0, description="one model request's bound")


class AgentsSection(Section):
    """`run_agent`: headless Claude Code (`claude -p --output-format stream-json`) in a project."""

    enabled: bool = False
    command: str | None = Field(
        default=None, description="the claude binary (unset: node_modules, then PATH)"
    )
    brain: BrainSection = BrainSection()
    timeout_s: float = Field(default=3600.0, gt=0, le=7 * 86_400, description="default bound of one run")
    max_turns: int | None = Field(default=None, ge=1)
    allowed_tools: list[str] = Field(
        default_factory=lambda: ["Bash", "Read", "Edit", "Write", "Glob", "Grep", "LS"],
        description="the tools a run may use without asking (it runs unattended)",
    )
    on_worker_loss: Literal["fail", "restart"] = Field(
        default="fail",
        description="a run whose worker died: fail with AgentRunLostError, or run it again elsewhere",
    )
    max_prompt_bytes: int = Field(default=256 * 1024, gt=0)
    isolation: IsolationSection = IsolationSection()

    @model_validator(mode="after")
    def _brain(self) -> AgentsSection:
        if self.brain.base_url is not None and not self.brain.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"brain.baseUrl must start with http:// or https://, got {self.brain.base_url!r}"
            )
        return self
