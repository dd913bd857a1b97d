"""Token entropy and a memory-bounded log-prob/entropy head.

The trainer needs, for every response token, the log-prob of the sampled token
(differentiable, for the policy loss) and the entropy of the next-token
distribution (detached, for AEM's proxy). Materialising the [tokens x vocab]
float32 logits for a 32k-token trajectory and a 152k vocabulary costs ~20 GB,
so `chunked_logprobs_and_entropy` streams the LM head over token chunks and
recomputes each chunk's logits in the backward pass instead of storing them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_entropy(logits: Tensor) -> Tensor:
    """Exact entropy (nats) of softmax(logits) over the last dim, in float32 (or float64)."""
    logits = logits.to(_acc_dtype(logits))
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def _acc_dtype(t: Tensor) -> torch.dtype:
    """Accumulate in float32, or float64 when the input already is."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _chunk_stats(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """log-prob of targets, entropy and logsumexp of one float32 logits chunk.

    In-place arithmetic keeps the chunk's temporaries to one extra [chunk x V].
    """
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    plogits = (logits - lse.unsqueeze(-1)).exp_().mul_(logits)  # p * z
    entropy = lse - plogits.sum(dim=-1)
    return target_logit - lse, entropy, lse


class _ChunkedLogprobEntropy(torch.autograd.Function):
    """log p(target) with a hand-written backward that recomputes chunk logits.

    d log p(y_t) / d z_t = onehot(y_t) - softmax(z_t), with z_t = h_t W^T / tau.
    Only the per-token logsumexp is saved, so memory is O(T + chunk * V).
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int,
                temperature: float) -> tuple[Tensor, Tensor]:
        n, acc = hidden.shape[0], _acc_dtype(hidden)
        logprobs = hidden.new_empty(n, dtype=acc)
        entropy = hidden.new_empty(n, dtype=acc)
        lse = hidden.new_empty(n, dtype=acc)
        for start in range(0, n, chunk_size):
            sl = slice(start, start + chunk_size)
            logits = (hidden[sl] @ weight.T).to(acc)
            if temperature != 1.0:
                logits.div_(temperature)
            logprobs[sl], entropy[sl], lse[sl] = _chunk_stats(logits, targets[sl])
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor, _grad_entropy: Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk_size, tau = ctx.chunk_size, ctx.temperature
        acc = lse.dtype
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        # accumulated in the weight's dtype, as autograd would hand it to the optimizer
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk_size):
            sl = slice(start, start + chunk_size)
            h, g = hidden[sl], grad_logprobs[sl].to(acc).unsqueeze(-1)
            z = (h @ weight.T).to(acc)
            if tau != 1.0:
                z.div_(tau)
            # d log p(y) / d z = onehot(y) - softmax(z), times g, times 1/tau; built in place
            grad_z = z.sub_(lse[sl].unsqueeze(-1)).exp_().mul_(-g)
            grad_z.scatter_add_(-1, targets[sl].unsqueeze(-1), g)
            if tau != 1.0:
                grad_z.div_(tau)
            grad_z = grad_z.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[sl] = (grad_z @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(grad_z.T, h.to(weight.dtype))
        return grad_hidden, grad_weight, None, None, None


def chunked_logprobs_and_entropy(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-token log p(target) (differentiable) and entropy (detached), float32 (float64 in).

    hidden: [..., d] final hidden states; lm_head_weight: [V, d]; targets: [...] ids.
    Never holds more than `chunk_size` rows of float32 logits at a time.
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree")
    if chunk_size <= 0 or temperature <= 0:
        raise ValueError("chunk_size and temperature must be positive")
    lead = targets.shape
    logprobs, entropy = _ChunkedLogprobEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]), lm_head_weight, targets.reshape(-1).long(),
        chunk_size, float(temperature),
    )
    return logprobs.view(lead), entropy.view(lead)


def naive_logprobs_and_entropy(
    hidden: Tensor, lm_head_weight: Tensor, targets: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Reference: full [tokens x vocab] float32 log-probs at once (as plain autograd
    code would do it, without wasted copies). For tests and benchmarks only."""
    logp = torch.log_softmax((hidden @ lm_head_weight.T).to(_acc_dtype(hidden)) / temperature, dim=-1)
    target_logp = logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp.exp().mul_(logp)).sum(dim=-1)
    return target_logp, entropy
