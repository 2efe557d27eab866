"""Selection inside :class:`~f3ocus.integrations.flower.F3ocusStrategy`: scores, budgets, plans, fallback.

Each node's last valid scores and budget are remembered (:class:`~.memory.PlanMemory`); a selection
round solves :func:`f3ocus.select_layers` on the sampled nodes that have scores, with budget

$$
b_k = \\min\\bigl(\\text{reported}_k \\text{ or } \\texttt{budget}(k),\\ \\texttt{max\\_budget}(k),\\ L\\bigr),
\\qquad b_k \\ge 1,
$$

and every other node gets the fallback plan, with the reason recorded.
"""

from __future__ import annotations

import time
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from f3ocus._checks import check_int
from f3ocus.integrations.flower import protocol as P
from f3ocus.integrations.flower.memory import least_covered
from f3ocus.integrations.flower.traffic import message_nbytes
from f3ocus.integrations.flower.validate import InvalidReply, read_budget, read_scores, reply_node

__all__ = ["SelectionMixin"]


class SelectionMixin:
    """The selection half of the strategy (state lives on the strategy: ``memory``, ``_round`` ...)."""

    def _server_int(self, name: str, value: Any, node: int) -> int:
        if callable(value):
            return check_int(f"{name}({node})", value(node), low=1)
        return int(value)

    def _budget_for(self, node: int, reported: int | None) -> int:
        b = reported if reported is not None else self._server_int("budget", self.budget, node)
        if self.max_budget is not None:
            b = min(b, self._server_int("max_budget", self.max_budget, node))
        return max(1, min(int(b), len(self.layer_map)))

    def _harvest(self, node: int, content: Any, server_round: int) -> None:
        """Remember the valid scores and budget a reply carries; note why they are unusable if not."""
        try:
            found = read_scores(content, self._layers)
        except InvalidReply as err:
            self.memory.scores.pop(node, None)
            self._score_problems[node] = f"invalid scores: {err}"
            self._warn(node, "scores rejected, it gets the fallback next selection", str(err))
            return
        if found is None:
            return
        scores, raw_budget = found
        budget = None
        if raw_budget is not None:
            try:
                budget = read_budget(raw_budget, len(self.layer_map))
            except InvalidReply as err:
                self._warn(node, "budget ignored, the server's applies", str(err))
        self.memory.scores[node] = (server_round, scores, budget)
        self._score_problems.pop(node, None)

    # -- selection -----------------------------------------------------------------------------
    def _query(self, server_round: int, arrays: ArrayRecord, nodes: list[int], grid: Grid) -> None:
        config = ConfigRecord({"server-round": server_round, P.LAYERS_KEY: self._layers})
        messages = [
            Message(
                RecordDict({"arrays": arrays, "config": config}),
                dst_node_id=node,
                message_type=P.QUERY_TYPE,
                group_id=str(server_round),
            )
            for node in nodes
        ]
        replies = list(grid.send_and_receive(messages, timeout=self.query_timeout))
        for m in messages:  # counted once sent: the grid gives each message its id
            self._count(m.metadata.dst_node_id, down=message_nbytes(m))
        sent, answered = self._sent_ids(messages), set()
        for reply in replies:
            node = reply_node(reply, sent)
            answered.add(node)
            self._count(node, up=message_nbytes(reply))
            if reply.has_error():
                self._score_problems[node] = f"error reply to the score query: {reply.error.reason}"
                self._warn(node, "no scores", self._score_problems[node])
            else:
                self._harvest(node, reply.content, server_round)
        for node in nodes:
            if node not in self.memory.scores and node not in self._score_problems:
                why = (
                    "sent no scores in its query reply" if node in answered else "no reply to the score query"
                )
                self._score_problems[node] = why
                self._warn(node, "no scores", why)

    def _select(self, server_round: int, nodes: list[int]) -> tuple[dict[int, list[str]], dict[int, str]]:
        from f3ocus import select_layers

        ok = [n for n in nodes if n in self.memory.scores]
        reasons = {n: self._score_problems.get(n, "no scores yet") for n in nodes if n not in ok}
        if not ok:
            return {}, reasons
        budgets = [self._budget_for(n, self.memory.scores[n][2]) for n in ok]
        start = time.perf_counter()
        try:
            assignment = select_layers(
                [self.memory.scores[n][1] for n in ok],
                budgets,
                solver=self.solver,
                tradeoff=self.tradeoff,
                normalize=self.normalize,
                seed=self.seed + server_round,
                **self.solver_options,
            )
        except Exception as err:  # a failed selection must not break the round
            log(
                WARNING,
                "f3ocus: select_layers failed (%s: %s); every client gets the fallback",
                type(err).__name__,
                err,
            )
            return {}, {n: f"select_layers failed: {type(err).__name__}" for n in nodes}
        r = self._round
        r["solver_seconds"] = time.perf_counter() - start
        r["importance"], r["diversity"] = float(assignment.importance), float(assignment.diversity)
        r["score_rounds"] = {n: self.memory.scores[n][0] for n in ok}
        return {n: list(assignment.layers[i]) for i, n in enumerate(ok)}, reasons

    def _fallback_plan(self, node: int, counts: dict[str, int], server_round: int) -> list[str] | None:
        if self.fallback == "skip":
            return None
        if self.fallback == "all":
            return self._layers
        reported = self.memory.scores.get(node, (0, {}, None))[2]
        b = self._budget_for(node, reported)
        return least_covered(
            self._layers, b, counts, self.memory.coverage, server_round, self.fallback_window
        )
