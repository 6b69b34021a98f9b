"""Grammar-constrained sampling that checks one token instead of the whole vocabulary.

llama-cpp-python applies the JSON-schema grammar to all 49,152 candidates before every token,
which made constrained output about 3x slower than free output here. As llama.cpp's own
``common_sampler`` does, this samples without the grammar first, asks the grammar about that one
token, and only when it is refused applies the grammar to the whole vocabulary and samples again.
For greedy decoding the result is the same token (the best allowed token is the best token when
that one is allowed); for sampling it is the standard llama.cpp rejection scheme.

A grammar llama.cpp cannot parse raises ``GrammarRejected`` here, where llama-cpp-python would
chain the NULL sampler llama.cpp returns and crash the process at the first token.

Only ``routing.embedded`` imports this; llama_cpp is imported lazily by it.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
from llama_cpp import Llama, _internals
from llama_cpp import llama_cpp as _c_api

from routing.llama_logs import route_llama_logs

route_llama_logs()

# llama-cpp-python's types are partial: its C API and sampler wrappers are used untyped here.
C: Any = _c_api
internals: Any = _internals


class GrammarRejected(ValueError):
    """llama.cpp refused a grammar. Its sampler would be NULL, and llama-cpp-python would chain it
    anyway: the process would die (SIGSEGV) at the first token instead of raising."""


def grammar_accepted(model: Any, gbnf: str, root: str = "root") -> bool:
    """Whether llama.cpp parses ``gbnf`` for ``model`` (a ``_internals.LlamaModel``), without using it.

    The parse recurses in C++ once per nested group: call it on a thread with a large stack
    (``routing.embedded`` does) or with a grammar whose nesting is bounded (``routing.grammar_safety``).
    """
    sampler = C.llama_sampler_init_grammar(model.vocab, gbnf.encode("utf-8"), root.encode("utf-8"))
    if not sampler:
        return False
    C.llama_sampler_free(sampler)
    return True


def _grammar_sampler(model: Any, grammar: Any) -> Any:
    """A sampler chain holding only ``grammar``; raises ``GrammarRejected`` rather than chain NULL."""
    sampler = C.llama_sampler_init_grammar(model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
    if not sampler:
        raise GrammarRejected("llama.cpp rejected the grammar (see its log line above); nothing was generated")
    chain = internals.LlamaSampler()
    C.llama_sampler_chain_add(chain.sampler, sampler)
    return chain


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


class GrammarCheckedSampler:
    """The sampler interface ``Llama`` uses (``sample``): the grammar sees the best candidates first.

    Per token: repetition penalties on the logits; the grammar applied to the ``shortlist`` best
    candidates only; when enough of them are allowed (one for greedy decoding, ``top_k`` when
    sampling, so the allowed tokens the sampler would keep are all in the shortlist) the sampler
    picks from them, which is exactly what it would pick after a full pass; otherwise the grammar
    is applied to the whole vocabulary, as before.
    """

    def __init__(self, penalties: Any, pick: Any, grammar: Any, n_vocab: int, *, needed: int, shortlist: int) -> None:
        self._penalties = penalties  # internals.LlamaSampler: repetition penalties
        self._pick = pick  # internals.LlamaSampler: greedy, or top-k/typical/top-p/min-p/temp/dist
        self._grammar = grammar  # internals.LlamaSampler: the grammar alone
        self._n_vocab = n_vocab
        self._needed = needed
        self._shortlist = min(shortlist, n_vocab - 1)
        self._buffer = (C.llama_token_data * n_vocab)()
        self._view = np.frombuffer(memoryview(self._buffer), dtype=_TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._short = (C.llama_token_data * self._shortlist)()
        self._short_view = np.frombuffer(memoryview(self._short), dtype=_TOKEN_DATA)
        self.sampled = 0  # tokens sampled
        self.full_passes = 0  # of which needed the grammar over the whole vocabulary

    @staticmethod
    def _array(buffer: Any, size: int) -> Any:
        data = ctypes.cast(buffer, C.llama_token_data_p)
        return C.llama_token_data_array(data=data, size=size, selected=-1, sorted=False)

    @staticmethod
    def _apply(sampler: Any, candidates: Any) -> None:
        C.llama_sampler_apply(sampler.sampler, ctypes.pointer(candidates))

    def sample(self, ctx: Any, idx: int = -1) -> int:
        self.sampled += 1
        self._view["id"] = self._ids
        self._view["logit"] = np.ctypeslib.as_array(C.llama_get_logits_ith(ctx.ctx, idx), shape=(self._n_vocab,))
        self._view["p"] = 0.0
        everything = self._array(self._buffer, self._n_vocab)
        self._apply(self._penalties, everything)  # changes logits in place, keeps the order
        logits = self._view["logit"]
        best = np.argpartition(-logits, self._shortlist - 1)[: self._shortlist]
        self._short_view["id"] = best.astype(np.int32)
        self._short_view["logit"] = logits[best]
        self._short_view["p"] = 0.0
        shortlist = self._array(self._short, self._shortlist)
        self._apply(self._grammar, shortlist)
        if int(np.count_nonzero(np.isfinite(self._short_view["logit"]))) >= self._needed:
            candidates = shortlist
        else:
            self.full_passes += 1
            candidates = everything
            self._apply(self._grammar, candidates)
        self._apply(self._pick, candidates)
        if not 0 <= candidates.selected < candidates.size:  # never read outside the candidates
            raise RuntimeError(
                f"the sampler selected no candidate (index {candidates.selected}); nothing more was generated"
            )
        token = int(candidates.data[candidates.selected].id)
        for sampler in (self._grammar, self._penalties, self._pick):
            C.llama_sampler_accept(sampler.sampler, token)
        return token


class CheckedGrammarLlama(Llama):
    """``Llama`` whose grammar-constrained generation uses ``GrammarCheckedSampler``."""

    last_sampler: GrammarCheckedSampler | None = None
    shortlist = 512

    def _init_sampler(self, *args: Any, **kw: Any) -> Any:
        grammar = kw.get("grammar")
        if grammar is None or args or kw.get("mirostat_mode", 0) or kw.get("logits_processor") is not None:
            if grammar is not None and not grammar_accepted(self._model, grammar._grammar, grammar._root):
                raise GrammarRejected("llama.cpp rejected the grammar (see its log line above); nothing was generated")
            return super()._init_sampler(*args, **kw)
        penalties = internals.LlamaSampler()
        penalties.add_penalties(
            n_vocab=self._n_vocab,
            penalty_last_n=self.last_n_tokens_size,
            penalty_repeat=kw.get("repeat_penalty", 1.0),
            penalty_freq=kw.get("frequency_penalty", 0.0),
            penalty_present=kw.get("presence_penalty", 0.0),
        )
        pick = internals.LlamaSampler()
        temp = kw.get("temp", 0.8)
        top_k = kw.get("top_k", 40)
        if temp == 0.0:
            pick.add_greedy()
            needed = 1
        else:
            pick.add_top_k(top_k)
            pick.add_typical(kw.get("typical_p", 1.0), 1)
            pick.add_top_p(kw.get("top_p", 0.95), 1)
            pick.add_min_p(kw.get("min_p", 0.05), 1)
            pick.add_temp(temp)
            pick.add_dist(self._seed)
            needed = top_k if 0 < top_k <= self.shortlist else self.shortlist + 1
        strict = _grammar_sampler(self._model, grammar)
        self.last_sampler = GrammarCheckedSampler(
            penalties, pick, strict, self._n_vocab, needed=needed, shortlist=self.shortlist
        )
        return self.last_sampler
