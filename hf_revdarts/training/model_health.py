"""Diverged models: found while training, and refused wherever a model becomes a result.

``NonFiniteGuard`` (guards.py) catches NaN/inf. A run can also diverge without ever going non-finite: with far
too large a learning rate the loss climbs to 1e7 and stays finite, the weights grow to 1e30 and the outputs
overflow only in the evaluation. So:

* ``DivergenceGuard`` stops a run whose loss rises far above its first value (``--divergence_factor``, 10 by
  default: a model's loss starts near log(vocabulary) and a healthy run only lowers it), or whose validation loss
  is non-finite or as far above; ``best/`` is then never written from that state.
* ``check_model_health`` refuses a saved model whose weights hold NaN/inf or whose loss on a few reference
  pairs is non-finite or far above an untrained model's (log of the vocabulary size): ``evaluate.py`` does not
  score it and ``publish.py`` does not publish it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..utils.guards import NonFiniteError, assert_finite_state

logger = logging.getLogger(__name__)

__all__ = [
    "DivergedModelError",
    "DivergenceError",
    "DivergenceGuard",
    "check_model_health",
    "mean_over_processes",
    "reference_loss",
]


class DivergenceError(NonFiniteError):
    """A run's loss rose far above its first value, or its outputs overflowed: training diverged."""


class DivergedModelError(NonFiniteError):
    """A saved model that is not finite, or whose loss shows it diverged."""


class DivergenceGuard:
    """Stops a run whose loss rises past ``factor`` times its first value.

    ``reference`` is the run's own record (``TrainState.loss_reference``: saved in checkpoints, so a resumed run
    compares with the same first value). ``sync`` averages a loss over processes so that every process decides
    alike (each sees other batches). ``factor`` 0 turns the check off (the non-finite guard still runs).
    """

    def __init__(
        self,
        factor: float,
        reference: dict[str, Any],
        name: str = "training",
        sync: Callable[[float], float] | None = None,
        last_checkpoint: Callable[[], str | None] = lambda: None,
        advice: str = "start again with a lower --lr or more --warmup_steps",
        result: str = "nothing of this state is saved as best/",
    ) -> None:
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(f"factor={factor!r} must be a finite number >= 0")
        self.factor = factor
        self.reference = reference
        self.name = name
        self.sync = sync
        self.last_checkpoint = last_checkpoint
        self.advice = advice
        self.result = result

    def _fail(self, what: str) -> DivergenceError:
        last = self.last_checkpoint()
        where = (f"the last checkpoint before it is {last} (resume from it with a lower --lr or more --warmup_steps)"
                 if last else f"no checkpoint was saved before it ({self.advice})")
        return DivergenceError(f"{self.name} diverged: {what}; {self.result}, {where}")

    def check_step(self, step: int, loss: float) -> None:
        """After a step's forward/backward, before its optimizer step: raise ``DivergenceError`` when the loss is
        more than ``factor`` times the run's first loss. A NaN/inf loss is left to the non-finite guard."""
        if not self.factor:
            return
        loss = self.sync(loss) if self.sync is not None else loss
        if not math.isfinite(loss):
            return
        if "train_loss" not in self.reference:
            self.reference.update(train_loss=loss, step=step)
            return
        first = self.reference["train_loss"]
        if loss > self.factor * first:
            raise self._fail(
                f"the training loss at step {step} is {loss:.4g}, more than --divergence_factor {self.factor:g} times "
                f"its first value {first:.4g} (step {self.reference['step']})"
            )

    def check_validation(self, step: int, val_loss: float) -> None:
        """At an evaluation, before anything is kept: a non-finite validation loss (finite weights whose outputs
        overflow) or one past ``factor`` times the first training loss is divergence."""
        if not math.isfinite(val_loss):
            raise self._fail(
                f"the validation loss at step {step} is {val_loss} although the weights are finite: the model's "
                "outputs overflow"
            )
        first = self.reference.get("train_loss")
        if self.factor and first is not None and val_loss > self.factor * first:
            raise self._fail(
                f"the validation loss at step {step} is {val_loss:.4g}, more than --divergence_factor {self.factor:g} "
                f"times the first training loss {first:.4g}"
            )


def reference_loss(vocab_size: int) -> float:
    """The loss of a model that knows nothing: uniform over the vocabulary."""
    return math.log(max(2, vocab_size))


@torch.no_grad()
def check_model_health(
    model: Any,
    tokenizer: Any,
    sources: Sequence[str],
    references: Sequence[str] | None,
    what: str,
    factor: float = 10.0,
    pairs: int = 8,
) -> float:
    """Refuse (``DivergedModelError``) a model with NaN/inf weights, or whose mean loss on the first ``pairs``
    (source, reference) pairs is non-finite or above ``factor`` x log(vocabulary), ``factor`` times the loss of a
    model that knows nothing. Without ``references`` only the outputs' finiteness is checked (the first decoder
    step on each source). Returns the loss (or the largest output magnitude without references)."""
    try:
        assert_finite_state(model, what)
    except NonFiniteError as e:
        raise DivergedModelError(str(e)) from None
    targets = list(references) if references is not None else list(sources)
    keep = [(s, r) for s, r in zip(sources, targets) if s.strip() and r.strip()][:pairs]
    if not keep:
        return float("nan")
    limit = getattr(model.config, "max_position_embeddings", None)
    enc = tokenizer([s for s, _ in keep], text_target=[r for _, r in keep], return_tensors="pt", padding=True,
                    truncation=True, max_length=limit, return_token_type_ids=False)
    labels = enc.pop("labels")
    labels[labels == tokenizer.pad_token_id] = -100
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = model(**{k: v.to(device) for k, v in enc.items()}, labels=labels.to(device))
    finally:
        model.train(was_training)
    if references is None:
        peak = float(out.logits.abs().max())
        if not math.isfinite(peak):
            raise DivergedModelError(
                f"refusing the {what}: its outputs on {len(keep)} input(s) hold NaN/inf although its weights are "
                "finite: it diverged in training. Use a checkpoint from before the divergence, or train again with "
                "a lower --lr"
            )
        return peak
    loss = float(out.loss)
    ceiling = factor * reference_loss(model.config.vocab_size)
    if not math.isfinite(loss) or loss > ceiling:
        raise DivergedModelError(
            f"refusing the {what}: its loss on {len(keep)} reference pair(s) is {loss:.4g}"
            + ("" if not math.isfinite(loss) else f", more than {factor:g} x log(vocabulary) = {ceiling:.3g} (an "
               "untrained model scores about log(vocabulary))")
            + ": it diverged in training. Use a checkpoint from before the divergence, or train again with a lower "
            "--lr"
        )
    return loss

def mean_over_processes(accelerator: Any) -> Callable[[float], float] | None:
    """A function averaging a float over the run's processes (None with one process)."""
    if accelerator.num_processes < 2:
        return None

    def mean(value: float) -> float:
        return float(accelerator.reduce(torch.tensor(float(value), device=accelerator.device), reduction="mean"))

    return mean
