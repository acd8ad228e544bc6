"""zoo_edm's sampling entry point, written against cosmic-ray's survivors (issue 16;
docs/testing.md)."""

import pytest

import zoo.plugins


@pytest.mark.parametrize("steps", [0, -1])
def test_edm_sample_refuses_fewer_than_one_step_before_touching_the_run(steps):
    edm = zoo.plugins.get("methods", "edm")
    with pytest.raises(ValueError, match=f"--steps must be >= 1, got {steps}"):
        edm.sample(None, 4, steps=steps)


def test_edm_samples_with_the_papers_18_heun_steps_by_default():
    """EDM's deterministic sampler: 18 steps, 35 NFE (Karras et al. 2022, Table 2, CIFAR-10)."""
    import inspect

    edm = zoo.plugins.get("methods", "edm")
    assert inspect.signature(edm.sample).parameters["steps"].default == 18
