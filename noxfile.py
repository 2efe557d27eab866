"""nox sessions: tests, lint, docs, bench. Each installs the CPU torch wheel first (see README)."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "docs"]
nox.options.reuse_existing_virtualenvs = True

TORCH = os.environ.get("F3OCUS_TORCH", "torch==2.13.0")
ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "NO_MKDOCS_2_WARNING": "1",
}


def _install(session: nox.Session, extras: str) -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, slow tests included (what CI runs)."""
    _install(session, "all,test")
    session.run("python", "-m", "pytest", *session.posargs, env=ENV)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples", "noxfile.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site; warnings are errors."""
    _install(session, "docs,plot")
    session.run("python", "-m", "mkdocs", "build", "--strict", env=ENV)


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks; JSON results go to benchmarks/results/."""
    _install(session, "bench,plot")
    session.run("python", "benchmarks/bench_ntk.py", *session.posargs, env=ENV)
    session.run("python", "benchmarks/bench_select.py", *session.posargs, env=ENV)
