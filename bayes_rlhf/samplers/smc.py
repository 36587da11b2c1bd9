"""Token-level sequential Monte Carlo over the KV cache: bootstrap and twisted.

N particles per prompt, P prompts, one batch of n = P * N rows. With proposal q, twist psi
(psi_0 = 1; a finished particle's potential is exp(r / beta); no twist: psi_t = 1 until then)::

    state, logp0 = prior.start(prompts, N);  log_w = 0;  log_psi = 0;  log_Z = 0
    for t in 0 .. T-1, for every particle still generating:
        x_t ~ q(. | x_<t)
        log_psi' = r(x) / beta if x ended (EOS or t = T-1) else log psi_t(x_{1:t})
        log_w += log pi0(x_t | x_<t) - log q(x_t | x_<t) + log_psi' - log_psi
        advance the prior (and q) by one token on live rows: state, logp0 = prior.step(state, x_t)
        per prompt, if ESS(w) < ess_threshold * N:
            log_Z += logsumexp(log_w) - log N;  idx = resample(log_w);  log_w = 0
            state = state.reindex(idx)      # the KV cache rows are copied, never recomputed
    log_Z += logsumexp(log_w) - log N       # E[exp(log_Z)] = Z

The m particles of a prompt that share a prefix (all N at t = 0, the copies of one parent after
resampling) draw x_t from m equal strata of q's CDF, one uniform in each, dealt in random order
(``stratify=True``, the default; ``models.sampling.stratified_uniforms``): every particle's x_t
still has law q(. | x_<t), so the weights and E[exp(log_Z)] = Z are unchanged, while the group
covers q evenly. Against enumeration (the tiny lipogram, constrained proposal, N = 4 and 8, 2000 runs)
Var(Z_hat / Z) fell to 0.71-0.76x of independent draws' (``tests/samplers/test_stratified.py``).

Where x_t comes from is a ``Proposal`` (``proposals.py``: the prior, another CausalLM, the exact
token posterior, the twisted proposal, any of them masked by a token-level constraint
(``constrained.py``), or any object with that method set); the potentials are ``potentials.py``,
the settings and state ``smc_state.py``.

The model states hold rows for live particles only (``_live_rows``): a finished particle's row is
stepped along, ignored, until finished rows exceed ``compact_threshold`` of the state; then one
``reindex`` drops them. Resampling copies rows anyway and keeps live children's only. Draws and
weights are per particle, so results do not depend on the threshold; only the compute does.
On CPU the steps of all n rows (4 <= n <= 64) run the float32 linear layers from MKL-packed weights
(``models.packed``; results equal up to float32 rounding; SmolLM2, one thread: a forward of 8 rows
15-20% cheaper, a run of N = 8 about 7%; below 4 rows the plain kernels run: packed, N = 2 runs were 18% slower).

The product of a particle's increments is pi0(x) exp(r / beta) / q(x), so the final weights
are proper. With psi_t = exp(V_t / beta) (``ExactTwist``) and q = pi*(x_t | x_<t) every
increment after the first is 1 and the first is Z: log_Z is exact with zero variance.
The same holds with the "twisted" proposal q ∝ pi0 psi_t (the incremental weight is then
sum_v pi0(v | x_<t) psi_t(x_<t, v) / psi_{t-1}(x_<t), whatever token is drawn).

Without a twist (bootstrap) and with a reward that arrives only at the end, every increment
before a particle ends is 0, the weights stay equal and nothing is resampled: on a model whose
completions mostly run to T, that is importance sampling with the prior. ``twist="prefix"``
(the reward on prefixes) or a learned or exact twist is what lets resampling act early.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from bayes_rlhf._checks import check_generator
from bayes_rlhf.errors import ConfigError, NoMassError
from bayes_rlhf.logweights import kish_ess, log_mean_exp
from bayes_rlhf.models.packed import packed_lm
from bayes_rlhf.models.sampling import sample_categorical, stratified_uniforms
from bayes_rlhf.samplers._common import as_prompts, check_target
from bayes_rlhf.samplers._live_rows import LiveRows
from bayes_rlhf.samplers.potentials import Potentials
from bayes_rlhf.samplers.proposal_protocol import Proposed, StepView
from bayes_rlhf.samplers.proposals import as_proposal
from bayes_rlhf.samplers.resampling import get_resampler
from bayes_rlhf.samplers.smc_state import SMCConfig, SMCState
from bayes_rlhf.samplers.twists import as_twist
from bayes_rlhf.samplers.weighted import SMCHistory, WeightedSamples
from bayes_rlhf.target import Target


class SMC:
    """Token-level SMC for a target and prompts: ``init``, ``step(state, generator=)``, ``run(generator=)``.

    ``proposal`` is any form ``smc`` accepts, converted once by ``as_proposal`` (checked before the
    twist, which may enumerate); ``self.proposal`` is then a ``Proposal``.
    """

    def __init__(self, target: Target, prompts: Sequence[str], config: SMCConfig, *, proposal=None, twist=None):
        check_target(target)
        self.target, self.config = target, config
        self.prompts = as_prompts(target, prompts)
        self.N, self.P, self.T = config.num_particles, len(self.prompts), target.max_new_tokens
        self.row_prompts = [p for p in self.prompts for _ in range(self.N)]
        self.group = torch.arange(self.P).repeat_interleave(self.N)
        self.proposal = as_proposal(proposal, target, self.prompts)
        self.twist = as_twist(twist, target, self.prompts)
        self.potentials = Potentials(target, self.twist)
        self.resampler = get_resampler(config.resampling)

    def _no_resampling_note(self, counts: torch.Tensor) -> str | None:
        """Why a run that never resampled some prompt was importance sampling there (None if all resampled)."""
        idle = int((counts == 0).sum())
        if idle == 0:
            return None
        head = f"no resampling for {idle} of {self.P} prompt(s), so SMC was importance sampling there"
        if self.twist is None and not self.proposal.lookahead and not getattr(self.proposal, "reweights", False):
            return (f"{head}: without a twist the weights change only when a particle ends, so with a terminal "
                    "reward they stay equal until the last token. Pass twist='prefix' (the reward on prefixes), "
                    "a fitted LearnedTwist, or ExactPosterior(s)")
        return f"{head}: the ESS never fell below ess_threshold * N"

    # ------------------------------------------------------------------ init / step / run
    def init(self) -> SMCState:
        """Run every prompt once and repeat its cache to N rows."""
        n = self.P * self.N
        rows = LiveRows.start(self.target.prior, self.proposal.lm, self.prompts, self.N, room=self.T)
        pad = self.target.prior.pad_id
        return SMCState(0, rows, torch.full((n, self.T), pad, dtype=torch.long),
                        torch.zeros((n, self.T), dtype=torch.bool), torch.ones(n, dtype=torch.bool),
                        torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64),
                        torch.full((n,), math.nan, dtype=torch.float64), torch.zeros(self.P, dtype=torch.float64),
                        self.proposal.start(self.N))

    def step(self, state: SMCState, *, generator: torch.Generator | None = None) -> tuple[SMCState, dict]:
        """Extend every live particle by one token, reweight, and resample where the ESS is low."""
        check_generator(generator)
        t, alive = state.t, state.alive
        live = torch.nonzero(alive).squeeze(-1)
        view = StepView(t, live, state.ids, state.rows.logp(live).double(), state.rows, self.row_prompts,
                        self.potentials, state.log_psi[live])  # next-token log-probs stay on the model's device
        proposed = self.proposal.log_probs(state.q_state, view)
        tok = torch.full_like(alive, self.target.prior.pad_id, dtype=torch.long)
        u = None
        if self.config.stratify:  # particles with one prefix draw their tokens from strata of its CDF
            u = stratified_uniforms(torch.cat([self.group[live, None], state.ids[live, :t]], 1), generator=generator)
        tok[live] = sample_categorical(proposed.log_q, generator=generator, uniforms=u).cpu()
        ids, mask = state.ids.clone(), state.mask.clone()
        ids[live, t], mask[live, t] = tok[live], True
        eos = self.target.prior.eos_token_id
        ends_here = (tok == eos) if eos is not None else torch.zeros_like(alive)
        ended = alive & (ends_here | (t + 1 == self.T))
        going = alive & ~ended
        new_psi, r_new = self._new_potentials(proposed, live, tok, ids, mask, ended, going, t)
        check = getattr(self.proposal, "check_rewards", None)
        if check is not None and ended.any():
            check([self.row_prompts[i] for i in torch.nonzero(ended).squeeze(-1).tolist()], ids[ended], r_new[ended])
        log_w = torch.where(alive, state.log_w + self._increments(state, view, proposed, tok, new_psi),
                            state.log_w)
        rows, stepped_rows = state.rows, 0
        if going.any():
            if rows.num_rows - int(going.sum()) > self.config.compact_threshold * rows.num_rows:
                rows = rows.compact(going)  # one KV copy drops every finished particle's row
            with self._packed():
                rows = rows.step(self.target.prior, self.proposal.lm, tok, alive, self.target.prior.pad_id)
            stepped_rows = rows.num_rows
        q_state = self.proposal.advance(state.q_state, view, tok[live], proposed)
        new = SMCState(t + 1, rows, ids, mask, going, log_w, torch.where(alive, new_psi, state.log_psi),
                       torch.where(ended, r_new, state.rewards), state.log_z, q_state)
        new, info = self._maybe_resample(generator, new, bool(going.any()), int(alive.sum()))
        info["model_rows"] = stepped_rows
        return new, info

    def _packed(self) -> contextlib.ExitStack:
        """The block of a step's forward: on CPU, the models' float32 linear layers compute a forward of
        all n = P * N rows (every run's count until particles finish) from MKL-packed weights, packed once
        and kept while the weights are unchanged (``models.packed``); fewer rows, after compaction or
        resampling dropped finished particles, run the plain kernels. Same products up to float32 rounding."""
        stack = contextlib.ExitStack()
        for lm in dict.fromkeys(x for x in (self.target.prior, self.proposal.lm) if x is not None):
            stack.enter_context(packed_lm(lm, self.P * self.N))  # CPU float32 layers only (packed_linears)
        return stack

    def _new_potentials(self, proposed: Proposed, live, tok, ids, mask, ended, going, t):
        """log psi [n] and rewards [n] (NaN unless ended) after the step: a lookahead proposal's where it
        evaluated the drawn token, else evaluated here (one row per particle)."""
        if proposed.log_psi is None:
            return self.potentials(self.row_prompts, ids, mask, ended, going, t)
        new_psi = torch.full((ids.shape[0],), -math.inf, dtype=torch.float64)
        r_new = torch.full((ids.shape[0],), math.nan, dtype=torch.float64)
        new_psi[live] = proposed.log_psi.gather(-1, tok[live, None]).squeeze(-1)
        r_new[live] = proposed.rewards.gather(-1, tok[live, None]).squeeze(-1)
        todo = torch.zeros_like(ended)
        todo[live] = torch.isnan(new_psi[live])  # a candidate the proposal left unevaluated was drawn
        if todo.any():
            psi, r = self.potentials(self.row_prompts, ids, mask, ended & todo, going & todo, t)
            new_psi, r_new = torch.where(todo, psi, new_psi), torch.where(todo, r, r_new)
        return new_psi, torch.where(ended, r_new, math.nan)

    def _increments(self, state: SMCState, view: StepView, proposed: Proposed, tok, new_psi) -> torch.Tensor:
        """log pi0 - log q of the drawn tokens + log psi' - log psi [n] (0 for finished particles, -inf for NaN)."""
        live = view.live
        self._check_twist_support(state, live, tok, new_psi)
        tl = tok[live, None].to(view.prior_logp.device)
        inc = torch.zeros_like(state.log_w)
        inc[live] = ((view.prior_logp.gather(-1, tl) - proposed.log_q.gather(-1, tl)).squeeze(-1).cpu()
                     + new_psi[live] - state.log_psi[live])
        if proposed.dead is not None:  # no allowed next token: the particle has no target mass
            inc[live[proposed.dead.cpu()]] = -math.inf
        return torch.where(torch.isnan(inc), -math.inf, inc)

    def _check_twist_support(self, state: SMCState, live: torch.Tensor, tok: torch.Tensor, new_psi: torch.Tensor):
        """ConfigError where a twist was -inf on a prefix whose extension has a finite potential.

        A twist of 0 drops the particle (its weight is 0 from then on), which is right only where no
        completion extending the prefix has target mass: one that has shows the twist undercounts Z
        (E[Z_hat] < Z). Seen only when such a particle survives to a finite potential, so a twisted
        proposal (which never draws a token of potential 0) cannot show it: PrefixPotential refuses
        -inf on unfinished prefixes unless told that it prunes correctly (``prune=True``)."""
        bad = (state.log_psi[live] == -math.inf) & (new_psi[live] > -math.inf)
        if not bool(bad.any()):
            return
        i = int(live[torch.nonzero(bad)[0, 0]])
        t = state.t
        prefix = self.target.prior.decode(state.ids[i: i + 1, :t], state.mask[i: i + 1, :t])[0]
        raise ConfigError(
            f"the twist ({type(self.twist).__name__}) was -inf (psi = 0) on the prefix {prefix!r} of prompt "
            f"{self.row_prompts[i]!r}, but its extension by token {int(tok[i])} has log potential "
            f"{float(new_psi[i]):.4g}: a twist may be 0 only where no completion extending the prefix has "
            "target mass, else the log Z estimate misses that mass. A reward a prefix can still meet later "
            "(e.g. 'must contain w') is not a valid twist as it is; pass a twist that is finite on such "
            "prefixes, or twist=None")

    def _maybe_resample(self, generator, state: SMCState, more: bool, stepped: int) -> tuple[SMCState, dict]:
        N = self.N
        idx = torch.arange(self.P * N)
        log_w, log_z = state.log_w.clone(), state.log_z.clone()
        ess = torch.zeros(self.P, dtype=torch.float64)
        resampled = torch.zeros(self.P, dtype=torch.bool)
        running = torch.zeros(self.P, dtype=torch.float64)
        for p in range(self.P):
            g = slice(p * N, (p + 1) * N)
            lz = log_mean_exp(log_w[g])
            if not torch.isfinite(lz):
                raise NoMassError(
                    f"every particle for prompt {self.prompts[p]!r} has zero target mass after token {state.t} "
                    "(reward -inf, potential -inf, or a token the prior cannot produce): the target has no "
                    "mass where the proposal looked. Use more particles, a proposal or twist that respects "
                    "the constraint, or relax the reward")
            running[p] = log_z[p] + lz
            ess[p] = kish_ess(log_w[g])
            # relative slack 1e-9: equal weights (ESS = N up to rounding) are never resampled
            if more and state.alive[g].any() and ess[p] < self.config.ess_threshold * N * (1 - 1e-9):
                idx[g] = p * N + self.resampler(log_w[g], N, generator=generator)
                log_z[p] = running[p]
                log_w[g] = 0.0
                resampled[p] = True
        info = {"ess": ess, "resampled": resampled, "log_z": running, "tokens": stepped,
                "num_alive": torch.zeros(self.P, dtype=torch.long).index_add_(0, self.group, state.alive.long())}
        if not resampled.any():
            return SMCState(**{**state.__dict__, "log_w": log_w}), info
        alive = state.alive[idx]
        # the copy drops finished children's rows for free; compact_threshold = 1 keeps every row
        keep = alive if self.config.compact_threshold < 1 else torch.ones_like(alive)
        new = SMCState(state.t, state.rows.resample(idx, keep), state.ids[idx], state.mask[idx], alive, log_w,
                       state.log_psi[idx], state.rewards[idx], log_z, self.proposal.reindex(state.q_state, idx))
        info["num_alive"] = torch.zeros(self.P, dtype=torch.long).index_add_(0, self.group, new.alive.long())
        return new, info

    def run(self, *, generator: torch.Generator | None = None) -> WeightedSamples:
        """All steps until every particle has finished; the final weighted particles."""
        check_generator(generator)
        t0 = time.perf_counter()
        state, infos, tokens, model_rows = self.init(), [], 0, 0
        for _ in tqdm(range(self.T), desc="smc", disable=not self.config.progress):
            state, info = self.step(state, generator=generator)
            infos.append(info)
            tokens += info["tokens"]
            model_rows += info["model_rows"]
            if not state.alive.any():
                break
        N = self.N
        log_z = state.log_z + log_mean_exp(state.log_w.view(self.P, N), dim=1)
        hist = SMCHistory(torch.stack([i["ess"] for i in infos]), torch.stack([i["resampled"] for i in infos]),
                          torch.stack([i["log_z"] for i in infos]), torch.stack([i["num_alive"] for i in infos]))
        seconds = time.perf_counter() - t0
        info = {"num_particles": N, "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
                "model_rows": model_rows, "resampling_steps": int(hist.num_resampling_steps.sum())}
        note = self._no_resampling_note(hist.num_resampling_steps)
        if note:
            info["note"] = note
        return WeightedSamples(state.ids, state.mask, state.log_w, state.rewards, log_z, self.group.clone(),
                               tuple(self.prompts), self.target.prior.vocabulary, hist, info)


def smc(target: Target, prompt: str | Sequence[str], num_particles: int, *, proposal=None, twist=None,
        ess_threshold: float = 0.5, resampling="systematic", generator: torch.Generator | None = None,
        progress: bool = False, compact_threshold: float = 0.25, stratify: bool = True) -> WeightedSamples:
    """Token-level SMC for the posterior of ``target`` (see the module docstring).

    Parameters
    ----------
    target : Target
    prompt : str or sequence of str
        P prompts, each with its own N particles, all in one batch.
    num_particles : int
        N >= 1 per prompt.
    proposal : None, "twisted", CausalLM, ExactPosterior(s) or a Proposal
        None: the prior (bootstrap). "twisted": q(x_t | x_<t) ∝ pi0(x_t | x_<t) psi_t(x_{1:t}),
        the locally optimal proposal for the twist (evaluates the twist, or the reward for
        tokens that end, on every token in the prior's support: use a top_k prior on large
        vocabularies). A CausalLM sharing the prior's tokenizer (one truncated below the prior's
        support, by its own top_k, is refused: the weights would miss that mass), or exact
        posteriors (one per prompt) whose token posterior pi*(x_t | x_<t) proposes. Each is converted once to a
        ``Proposal`` (``samplers.proposals``); an object with that method set is used as it is.
        ``TwistedProposal(top_p=0.95)``: the twisted proposal evaluating the potentials on the
        head of pi0 only (unbiased; far cheaper on large vocabularies).
        ``LocallyConstrained(constraint, base=None)`` (``samplers.constrained``): for a constraint
        checked token by token (``TokenMask``: a lipogram), the forbidden next tokens are masked
        and the allowed mass goes into the weight, so no particle dies of the constraint; the
        target's reward must be -inf wherever the constraint is violated (checked where cheap).
    twist : None, "prefix", "exact", ExactPosterior(s), a prefix reward, or an object with ``log_potential``
        None: bootstrap with the terminal reward only. With a reward that arrives only at the end
        the weights stay equal until particles finish, so bootstrap SMC never resamples on the way
        and is importance sampling with the prior (``info["resampling_steps"]`` is then 0 and
        ``info["note"]`` says so); a twist is what makes SMC worth running.
        "prefix": ``PrefixPotential(target.reward)``, the target's own reward evaluated on
        prefixes (a heuristic twist; exact only when the reward of a prefix predicts its soft value).
        A twist must be > 0 wherever the target has mass below the prefix: a prefix reward of -inf
        is refused unless the reward is prefix-closed (``PrefixPotential``), an ExactPosterior of
        another target that is 0 where this one is not is refused, and a particle of twist 0 that
        reaches a finite potential raises ``ConfigError``.
        "exact": the optimal soft-value twist from enumerating each prompt's posterior (small
        models only). ExactPosterior(s): the same twist from tables you have. A reward (text or
        TokenReward) on prefixes: ``PrefixPotential``. ``LearnedTwist`` (``fit_twist``,
        ``fit_twist_ctl``). Another name is a ``ConfigError``.
    ess_threshold : float in (0, 1]
    resampling : str or callable
    generator : torch.Generator, optional
        ``torch.Generator().manual_seed(seed)``; anything else (a seed, a numpy Generator) is a ConfigError.
    progress : bool
    compact_threshold : float in [0, 1]
        When finished particles' KV-cache rows are dropped (see ``SMCConfig``); no effect on results.
    stratify : bool
        Particles that share a prefix (all N at the first token, copies after resampling) draw their
        next tokens from strata of the proposal's CDF (see ``SMCConfig``); False: independent draws.

    Returns
    -------
    WeightedSamples
        N * P finished particles with their final weights, ``log_z`` [P] (unbiased in
        exp), ``history`` (per-step ESS, resampling, running log Z) and ``info``
        (tokens, seconds, tokens_per_second, model_rows: rows the model steps ran, summed over steps;
        resampling_steps: resampling events summed over prompts; note: present when some prompt was
        never resampled, saying why). ``summary()`` gives each prompt's ``num_resampling_steps``.
    """
    config = SMCConfig(num_particles, ess_threshold=ess_threshold, resampling=resampling, progress=progress,
                       compact_threshold=compact_threshold, stratify=stratify)
    check_generator(generator)
    return SMC(target, prompt, config, proposal=proposal, twist=twist).run(generator=generator)
