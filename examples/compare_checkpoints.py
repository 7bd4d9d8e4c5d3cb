"""Two checkpoints on one sample (e.g. a one-stage and a two-stage fine-tune): the target words across layers, the
attention per layer and the attention mass, side by side on shared scales, with second-minus-first panels.

    python examples/compare_checkpoints.py                      # the zoo's one-stage and two-stage checkpoints
    python examples/compare_checkpoints.py --model-a ckpt/one-stage --model-b ckpt/two-stage --image koniq/123.jpg
"""

import _common

from vlm_lens import plot

args = _common.arguments(__doc__.splitlines()[0], models=2).parse_args()
a = _common.trace(args, args.model_a)
b = _common.trace(args, args.model_b)
names = (args.model_a, args.model_b)
print(f"answers: {a.answer!r} / {b.answer!r}")
_common.save(args, plot.compare(a, b, "target_words", names=names, words=_common.LEVELS), "compare_target_words")
_common.save(args, plot.compare(a, b, "attention", names=names), "compare_attention")
_common.save(args, plot.compare(a, b, "attention_mass", names=names), "compare_attention_mass")
