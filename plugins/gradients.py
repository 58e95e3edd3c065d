"""Plain gradient methods: vanilla gradient, guided backprop, gradient x input."""

from __future__ import annotations

import numpy as np

from nxrt.registry import Method


class VanillaGradient(Method):
    """d score / d x (Simonyan et al. 2014); reference: Captum Saliency(abs=False)."""

    name = "vanilla"
    aliases = ("vg", "saliency", "gradient")
    stacks_samples = True
    summary = "gradient of the score with respect to every input voxel (signed)"

    def explain(self, ctx, x, target):
        return ctx.gradient(x, target)


class GuidedBackprop(Method):
    """Backward pass where every Relu lets only positive gradients through positive units
    (Springenberg et al. 2015); reference: Captum GuidedBackprop."""

    name = "guided_backprop"
    aliases = ("gbp", "guided")
    stacks_samples = True
    summary = "gradient with negative signals cut at every ReLU (sharper, class-insensitive detail)"

    def explain(self, ctx, x, target):
        return ctx.gradient(x, target, guided=True)


class GradientXInput(Method):
    """x * d score / d x (Shrikumar et al. 2016); reference: Captum InputXGradient."""

    name = "gradient_x_input"
    aliases = ("gxi", "input_x_gradient")
    stacks_samples = True
    summary = "input times gradient: first-order contribution of each voxel to the score"

    def explain(self, ctx, x, target):
        return np.asarray(x, np.float32) * ctx.gradient(x, target)
