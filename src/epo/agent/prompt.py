"""Env text -> prompt token ids (through the tokenizer's chat template), and the behaviour-cloning target text.

The prompt is a system message (the agent's role) and one user message, in the spirit of the verl-agent / EPO
prompts: the task; the number of steps taken; with `list_older_actions` every older action (actions only, the
ScienceWorld convention); the last `history_window` (observation, action) pairs in full; the current step and
observation; the admissible actions; the response format. With `action_prefix` the assistant turn starts with
'<action>' so the model only writes the action.

Truncation to `max_prompt_tokens`, cheapest information first, until the prompt fits:
  1. drop full history entries, oldest first (with `list_older_actions` their actions stay in the action list);
  2. drop listed older actions, oldest first;
  3. drop admissible actions from the end of the list (a line says how many are not shown);
  4. cut the middle of the current observation (marked by CUT_MARKER), then of the task.
The system message, the instructions and the format never shrink; a limit too small for them is a ValueError at
construction. Each phase estimates how much to drop from per-part token counts and checks the real tokenization
of the whole prompt, so a prompt costs one tokenization when it fits and a few when it does not. `fit` says whether
anything was dropped (`PromptFit.shortened`) and whether admissible actions were (`PromptFit.actions_cut`): the
collector counts both per trajectory, so a run sees how often the model decided without its whole context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from epo.config import AgentConfig
from epo.errors import ModelLoadError

ROLES = {
    "alfworld": "You are an expert agent operating in the ALFRED Embodied Environment, a text-based household "
    "simulator.",
    "sciworld": "You are an expert agent operating in the ScienceWorld environment, a text-based virtual "
    "laboratory for tasks from the elementary science curriculum.",
}
DEFAULT_ROLE = "You are an expert agent playing a text-based interactive game."
ROLE_SUFFIX = " At every step you choose exactly one action from the admissible actions."

FORMAT_THINKING = (
    "First reason step by step about the current situation; this reasoning MUST be enclosed in <think> </think> "
    "tags. Then choose exactly one admissible action for the current step, copied exactly from the list, and "
    "present it within <action> </action> tags."
)
FORMAT_ACTION_ONLY = (
    "Choose exactly one admissible action for the current step, copied exactly from the list, and reply with it "
    "within <action> </action> tags and nothing else."
)
# The words around the parts of the user message. "full" follows the verl-agent/EPO prompts (paper presets);
# "compact" says the same in about half the tokens, which halves prefill and update cost for small CPU models.
STYLES: dict[str, dict[str, str]] = {
    "full": {
        "task": "Your task is to: {task}",
        "prior": "Prior to this step, you have already taken {n} step(s).",
        "listed_header": "Your earlier actions, oldest first:",
        "listed": "Step {step} action: {action}",
        "full_header": "Your most recent observations and the actions you took:",
        "full": "[Step {step}] Observation: {observation}\n[Step {step}] Action: {action}",
        "current": "You are now at step {step}. Your current observation is:",
        "actions": "Your admissible actions in the current situation are:",
        "turn": "Now it's your turn to take an action.",
    },
    "compact": {
        "task": "Task: {task}",
        "prior": "",
        "listed_header": "Earlier actions:",
        "listed": "{step}. {action}",
        "full_header": "Recent steps:",
        "full": "{step}. {observation}\n> {action}",
        "current": "Step {step}:",
        "actions": "Actions:",
        "turn": "",
    },
}
COMPACT_SYSTEM = "You play a text game. Each turn, reply with one action from the list."
COMPACT_FORMAT = "Reply with <action>one action from the list</action>."
_SENTINEL = "\u0000EPO_USER_CONTENT\u0000"
_HUGE = 10**6  # stands in for the step number and hidden-action count when measuring the smallest prompt
MAX_CHARS_PER_TOKEN = 16  # no tokenizer averages more on real text: longer texts are clipped before counting
CUT_MARKER = " [... cut ...] "  # replaces the middle of a cut observation/task (no count: its size must not vary)
ACTION_CHUNK = 64  # admissible actions counted per batch when the list has to be cut


@dataclass(frozen=True)
class PromptFit:
    """A prompt's token ids and what truncation to max_prompt_tokens took out of it."""

    ids: list[int]
    shortened: bool  # anything dropped or cut to fit: history, listed actions, admissible actions, observation, task
    actions_cut: bool  # admissible actions left out to fit (the agent.max_admissible_actions cap does not count)


@dataclass(frozen=True)
class _Episode:
    task: str
    observation: str
    actions: list[str]  # admissible actions after the max_admissible_actions cap
    hidden_actions: int  # admissible actions cut by the cap
    history: list[tuple[str, str]]
    turn_idx: int


@dataclass(frozen=True)
class _View:
    """Which parts of the episode the prompt shows; truncation shrinks it."""

    n_full: int  # most recent history entries shown in full
    n_listed: int  # older actions listed just before them
    n_actions: int  # admissible actions shown (a prefix of the list)
    obs_chars: int | None = None  # None: the whole observation
    task_chars: int | None = None


class PromptBuilder:
    def __init__(self, tokenizer: Any, cfg: AgentConfig, list_older_actions: bool, env_name: str = ""):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.list_older_actions = bool(list_older_actions)
        self.limit = int(cfg.max_prompt_tokens)
        self.style = STYLES[cfg.prompt_style]
        self.system = ROLES.get(env_name, DEFAULT_ROLE) + ROLE_SUFFIX
        self.format_text = FORMAT_THINKING if cfg.thinking and not cfg.action_prefix else FORMAT_ACTION_ONLY
        if cfg.prompt_style == "compact":
            self.system = COMPACT_SYSTEM
            self.format_text = self.format_text if cfg.thinking and not cfg.action_prefix else COMPACT_FORMAT
        self._backend = getattr(tokenizer, "backend_tokenizer", None)  # Rust tokenizer: no Python-side overhead
        self._prefix, self._suffix = self._chat_frame()
        if cfg.action_prefix:
            self._suffix += "<action>"
        skeleton = _Episode(CUT_MARKER, CUT_MARKER, [], _HUGE, [], _HUGE)  # task and observation fully cut
        smallest = self._count(self._render(skeleton, _View(0, 0, 0)))
        if smallest > self.limit:
            raise ModelLoadError(
                f"agent.max_prompt_tokens={self.limit} is too small: the fixed part of the prompt alone takes "
                f"{smallest} tokens with this tokenizer"
            )

    # ---- public ----
    def fit(
        self,
        task: str,
        observation: str,
        admissible_actions: list[str],
        history: list[tuple[str, str]],
        turn_idx: int,
    ) -> PromptFit:
        """Prompt token ids (chat template applied, generation prompt added), at most max_prompt_tokens long, and
        whether truncation shortened the prompt / cut admissible actions to get there.

        `history` is every past (observation, action) pair of the episode, oldest first; `turn_idx` counts from 0.
        """
        return self._build(task, observation, admissible_actions, history, turn_idx)[1]

    def build(
        self,
        task: str,
        observation: str,
        admissible_actions: list[str],
        history: list[tuple[str, str]],
        turn_idx: int,
    ) -> list[int]:
        """`fit(...).ids`: the token ids alone (callers that do not report truncation, e.g. SFT samples)."""
        return self.fit(task, observation, admissible_actions, history, turn_idx).ids

    def build_text(
        self,
        task: str,
        observation: str,
        admissible_actions: list[str],
        history: list[tuple[str, str]],
        turn_idx: int,
    ) -> str:
        """The same prompt as text (transcripts, debugging)."""
        return self._build(task, observation, admissible_actions, history, turn_idx)[0]

    def response_text(self, action: str, thought: str = "") -> str:
        """The exact assistant text the parser reads as `action` (behaviour-cloning target, without end token).

        With action_prefix the prompt already ends with '<action>', so this is 'ACTION</action>' (and `thought` is
        ignored, as is the thinking option); with thinking it is '<think>THOUGHT</think>\\n<action>ACTION</action>'.
        """
        if self.cfg.action_prefix:
            return f"{action}</action>"
        if self.cfg.thinking:
            return f"<think>{thought.strip()}</think>\n<action>{action}</action>"
        return f"<action>{action}</action>"

    # ---- rendering ----
    def _chat_frame(self) -> tuple[str, str]:
        """The chat-template text before and after the user message content (the system message is fixed)."""
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": _SENTINEL}]
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ModelLoadError("the tokenizer has no chat template; use an instruct/chat model's tokenizer")
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role (e.g. Gemma): put the role into the user message
            messages = [{"role": "user", "content": self.system + "\n\n" + _SENTINEL}]
            try:
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as e:
                raise ModelLoadError(f"the tokenizer's chat template failed: {str(e).splitlines()[0]}") from None
        if not isinstance(text, str) or text.count(_SENTINEL) != 1:
            raise ModelLoadError("the tokenizer's chat template does not keep the user message verbatim")
        prefix, suffix = text.split(_SENTINEL)
        return prefix, suffix

    def _render(self, ep: _Episode, view: _View) -> str:
        return self._prefix + self._user_content(ep, view) + self._suffix

    def _user_content(self, ep: _Episode, view: _View) -> str:
        first_step = ep.turn_idx - len(ep.history) + 1  # step number of history[0]
        n_hist = len(ep.history)
        style = self.style
        lines = [style["task"].format(task=_middle_cut(ep.task, view.task_chars)), ""]
        if ep.turn_idx > 0 and style["prior"]:
            lines.append(style["prior"].format(n=ep.turn_idx))
        listed_start = n_hist - view.n_full - view.n_listed
        if view.n_listed:
            lines.append(style["listed_header"])
            for i in range(listed_start, n_hist - view.n_full):
                lines.append(self._listed_line(first_step + i, ep.history[i][1]))
        if view.n_full:
            lines.append(style["full_header"])
            for i in range(n_hist - view.n_full, n_hist):
                lines.append(self._full_entry(first_step + i, *ep.history[i]))
        if len(lines) > 2:
            lines.append("")
        lines += [
            style["current"].format(step=ep.turn_idx + 1),
            _middle_cut(ep.observation, view.obs_chars),
            "",
            style["actions"],
            *ep.actions[: view.n_actions],
        ]
        hidden = ep.hidden_actions + len(ep.actions) - view.n_actions
        if hidden:
            lines.append(f"(... and {hidden} more not shown)")
        elif not ep.actions:
            lines.append("(none listed)")
        lines += ["", style["turn"], self.format_text] if style["turn"] else ["", self.format_text]
        return "\n".join(lines)

    def _listed_line(self, step: int, action: str) -> str:
        return self.style["listed"].format(step=step, action=action)

    def _full_entry(self, step: int, observation: str, action: str) -> str:
        return self.style["full"].format(step=step, observation=observation, action=action)

    # ---- tokenization ----
    def _encode(self, text: str) -> list[int]:
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _count(self, text: str) -> int:
        return len(self._encode(text))

    def _count_many(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self._backend is not None:
            return [len(e.ids) for e in self._backend.encode_batch(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    # ---- truncation ----
    def _build(self, task, observation, admissible_actions, history, turn_idx) -> tuple[str, PromptFit]:
        clip = MAX_CHARS_PER_TOKEN * self.limit  # a text this long cannot fit in the limit anyway
        actions = [str(a) for a in admissible_actions]
        cap = self.cfg.max_admissible_actions
        shown = actions[:cap] if cap > 0 else actions
        past = [(_middle_cut(str(obs).strip(), clip), _middle_cut(str(act), clip)) for obs, act in history]
        ep = _Episode(str(task).strip(), str(observation).strip(), shown, len(actions) - len(shown), past, turn_idx)
        n_full = min(max(self.cfg.history_window, 0), len(past))
        n_listed = len(past) - n_full if self.list_older_actions else 0
        whole = _View(n_full, n_listed, len(shown))  # what the prompt shows when nothing has to go
        view = replace(whole, obs_chars=_clip_or_none(ep.observation, clip), task_chars=_clip_or_none(ep.task, clip))
        text = self._render(ep, view)
        if len(text) <= clip:  # the common case: everything fits, one tokenization
            ids = self._encode(text)
            if len(ids) <= self.limit:
                return text, PromptFit(ids, shortened=False, actions_cut=False)
        view, text, ids = self._drop_parts(ep, view)
        if len(ids) > self.limit:
            view, text, ids = self._cut_middle(ep, view, text, ids, "obs_chars", ep.observation)
        if len(ids) > self.limit:
            view, text, ids = self._cut_middle(ep, view, text, ids, "task_chars", ep.task)
        if len(ids) > self.limit:  # only with > 1e6 steps or hidden actions, or an odd tokenizer: never return more
            raise RuntimeError(f"prompt still has {len(ids)} tokens after truncation (max_prompt_tokens={self.limit})")
        # A clipped text, a dropped part and a phase-4 cut all leave the final view smaller than `whole`.
        return text, PromptFit(ids, shortened=view != whole, actions_cut=view.n_actions < whole.n_actions)

    def _drop_parts(self, ep: _Episode, start: _View) -> tuple[_View, str, list[int]]:
        """Phases 1-3, planned backwards: start from the prompt with every droppable part gone and give parts back
        in reverse drop order while the estimated size fits; then check and drop again if the estimate was short.
        Costs are counted lazily, so a huge admissible list costs about as much as the part of it that fits."""
        f0, l0, a0 = start.n_full, start.n_listed, start.n_actions
        total = f0 + (l0 + f0 if self.list_older_actions else 0) + a0  # moves from `start` to the bare prompt
        bare = replace(start, n_full=0, n_listed=0, n_actions=0)
        text = self._render(ep, bare)
        ids = self._encode(text)
        budget = self.limit - len(ids)
        if budget < 0:
            return bare, text, ids
        restored: list[int] = []  # tokens given back by undoing moves, the last move first
        for cost in self._costs_from_end(ep, start):
            if cost > budget:
                break
            budget -= cost
            restored.append(cost)
        undone = len(restored)
        while undone:
            view = self._view_after(f0, l0, a0, total - undone)
            view_text = self._render(ep, view)
            view_ids = self._encode(view_text)
            if len(view_ids) <= self.limit:
                return view, view_text, view_ids
            over = len(view_ids) - self.limit
            while undone and over > 0:  # the estimate was short: drop parts again, in drop order
                undone -= 1
                over -= restored[undone]
        return bare, text, ids

    def _costs_from_end(self, ep: _Episode, start: _View):
        """Tokens each move of phases 3, 2, 1 gives back when undone, the last move first (+1: joining newline)."""
        n_hist, f0, l0 = len(ep.history), start.n_full, start.n_listed
        first_step = ep.turn_idx - n_hist + 1
        for lo in range(0, start.n_actions, ACTION_CHUNK):  # phase 3 undone: actions from the top of the list
            yield from (c + 1 for c in self._count_many(ep.actions[lo : min(lo + ACTION_CHUNK, start.n_actions)]))
        listed = range(n_hist - f0 - l0, n_hist) if self.list_older_actions else range(0)
        lines = [self._listed_line(first_step + i, ep.history[i][1]) for i in listed]
        listed_cost = dict(zip(listed, self._count_many(lines), strict=True))
        yield from (listed_cost[i] + 1 for i in reversed(listed))  # phase 2 undone: newest listed action first
        full = range(n_hist - f0, n_hist)
        full_cost = self._count_many([self._full_entry(first_step + i, *ep.history[i]) for i in full])
        for i, cost in reversed(list(zip(full, full_cost, strict=True))):  # phase 1 undone: newest entry first
            yield max(cost - listed_cost.get(i, -1), 0)  # with listing, the full entry replaces its listed line

    def _view_after(self, f0: int, l0: int, a0: int, moves: int) -> _View:
        phase1 = min(moves, f0)
        listed = l0 + (phase1 if self.list_older_actions else 0)
        phase2 = min(max(moves - f0, 0), listed)
        phase3 = min(max(moves - f0 - listed, 0), a0)
        return _View(f0 - phase1, listed - phase2, a0 - phase3)

    def _cut_middle(
        self, ep: _Episode, view: _View, text: str, ids: list[int], field: str, full_text: str
    ) -> tuple[_View, str, list[int]]:
        """Phase 4: cut the middle of one text (observation or task) until the prompt fits or the text is gone."""
        sample = full_text[:8192]
        chars_per_token = len(sample) / max(self._count(sample), 1)
        keep = getattr(view, field)
        keep = len(full_text) if keep is None else keep
        while len(ids) > self.limit and keep > 0:
            keep = max(keep - math.ceil((len(ids) - self.limit) * chars_per_token) - 1, 0)
            view = replace(view, **{field: keep})
            text = self._render(ep, view)
            ids = self._encode(text)
        return view, text, ids


def _clip_or_none(text: str, clip: int) -> int | None:
    return clip if len(text) > clip else None


def _middle_cut(text: str, keep_chars: int | None) -> str:
    """Keep the first and last keep_chars/2 characters with a marker in between (None: keep everything)."""
    if keep_chars is None or keep_chars >= len(text):
        return text
    head, tail = (keep_chars + 1) // 2, keep_chars // 2
    return text[:head] + CUT_MARKER + text[len(text) - tail :]
