"""The cifar10 presets of every first-party method against docs/reproduction.md (each setting a
preset sets has a row with its source, and the row's value is the preset's), and the official-code
options they use:
CT's μ(k) in both forms and the continuous-time weighting λ = (τ⁻¹)′."""

import ast
import math
import re
from pathlib import Path

import pytest
import torch
import zoo_ect.method
import zoo_edm.method
import zoo_meanflow.method
import zoo_pd.method
import zoo_rf.method
import zoo_scm.method
from zoo_cm import method as cm_method
from zoo_cm.loss import ct_num_scales, ct_target_ema, karras_time, weighting

from zoo.plugins import get

DOC = Path(__file__).resolve().parents[1] / "docs" / "reproduction.md"


def doc_rows() -> dict[str, dict[str, list[str]]]:
    """Section heading (up to " — ") → {setting: its row's cells after the setting}."""
    tables, section = {}, None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].split(" — ")[0].strip()
        elif section and line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tables.setdefault(section, {})[cells[0].strip("`")] = cells[1:]
    return tables


def doc_tables() -> dict[str, dict[str, str]]:
    """Section heading → {setting: zoo cell} of its table."""
    return {section: {k: cells[0].strip("`") for k, cells in rows.items()}
            for section, rows in doc_rows().items()}


def test_every_row_names_its_source_or_says_it_was_not_checked():
    for section, rows in doc_rows().items():
        for setting, (_zoo, _paper, code, source) in rows.items():
            assert source and (source != "—" or code == "not checked"), (section, setting)
            assert code != "not checked" or source == "—", (section, setting)


def presets():
    """Section → (resolved config, the preset's own settings)."""
    edm, cm, pd = (get("methods", m) for m in ("edm", "cm", "pd"))
    cm_presets = cm_method.PRESETS["cifar10"]
    own_edm = zoo_edm.method.PRESETS["cifar10"]
    out = {
        "EDM VE": (edm.configure("cifar10"), own_edm),
        "EDM VP": (edm.configure("cifar10", network="ddpmpp"), {**own_edm, "network": "ddpmpp"}),
        "PD": (pd.configure("cifar10"), zoo_pd.method.PRESETS["cifar10"]),
    }
    for label, mode in (("CD", "cd"), ("CT", "ct"), ("CD∞", "cd-cont"), ("CT∞", "ct-cont")):
        out[label] = (cm.configure("cifar10", mode=mode),
                      {**cm_presets["common"], **cm_presets[mode]})
    rf, meanflow, ect, scm = (get("methods", m) for m in ("rf", "meanflow", "ect", "scm"))
    out["1-RF"] = (rf.configure("cifar10"), zoo_rf.method.PRESETS["cifar10"])
    out["2-RF"] = (rf.configure("cifar10", mode="reflow"),
                   zoo_rf.method.REFLOW_PRESETS["cifar10"])
    out["MeanFlow"] = (meanflow.configure("cifar10"), zoo_meanflow.method.PRESETS["cifar10"])
    out["ECT"] = (ect.configure("cifar10"), zoo_ect.method.PRESETS["cifar10"])
    scm_presets = zoo_scm.method.PRESETS["cifar10"]
    for label, mode in (("sCT", "sct"), ("sCD", "scd")):
        out[label] = (scm.configure("cifar10", mode=mode),
                      {**scm_presets["common"], **scm_presets[mode]})
    return out


def value(config, setting: str):
    name, _, key = setting.partition(".")
    got = getattr(config, name)
    return got[key] if key else got


REPRODUCTION_KEYS = {"checkpoint_every", "device", "sample_sigmas", "log_every",
                     "snapshot_every_kimg"}


def test_every_cifar10_preset_matches_the_reproduction_tables():
    tables, configs = doc_tables(), presets()
    assert set(tables) == set(configs)
    for section, (config, own) in configs.items():
        for setting, cell in tables[section].items():
            assert value(config, setting) == ast.literal_eval(cell), (section, setting)
        # every setting a preset sets is in its table (network_kwargs key by key)
        listed = set(tables[section])
        for name, preset_value in own.items():
            if name in REPRODUCTION_KEYS or section == "EDM VP" and name != "network":
                continue
            if isinstance(preset_value, dict):
                assert {f"{name}.{k}" for k in preset_value} <= listed, (section, name)
            else:
                assert name in listed, (section, name)


def test_ct_cont_preset_is_cd_cont_but_for_the_launch_commands_changes():
    """launch.sh:65 trains CT∞ on CD∞'s config with lr 5e-6 and the stop-gradient objective;
    everything else (teacher init, l2, dropout 0.3, uniform-u) is CD∞'s."""
    cm = get("methods", "cm")
    cd, ct = cm.configure("cifar10", mode="cd-cont"), cm.configure("cifar10", mode="ct-cont")
    differ = {k for k in vars(cd) if getattr(cd, k) != getattr(ct, k)}
    assert differ == {"mode", "lr", "continuous_loss"}
    assert (ct.lr, ct.continuous_loss, ct.init) == (5e-6, "stopgrad", "teacher")


@pytest.mark.parametrize("form", ["paper", "code"])
def test_ct_target_ema_follows_its_formula_at_the_start_middle_and_end(form):
    K, s0, s1, mu0 = 800_000, 2, 150, 0.9
    for k in (0, K // 2, K):
        n = math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1
        assert ct_num_scales(k, K, s0, s1) == n
        denominator = n if form == "paper" else n - 1
        assert ct_target_ema(k, K, s0, s1, mu0, form) == pytest.approx(
            math.exp(s0 * math.log(mu0) / denominator), rel=1e-12)
    start = ct_target_ema(0, K, s0, s1, mu0, form)
    assert start == pytest.approx(mu0 if form == "paper" else mu0**2)
    with pytest.raises(ValueError, match="ct_mu_form='jax' is not one of paper, code"):
        ct_target_ema(0, K, s0, s1, mu0, "jax")


def test_uniform_u_weighting_is_the_derivative_of_the_inverse_karras_time():
    eps, T, rho = 0.002, 80.0, 7.0
    t = torch.tensor([0.002, 0.01, 0.3, 1.0, 7.0, 80.0], dtype=torch.float64)

    def inverse(s):  # τ⁻¹(t) = (t^{1/ρ} − ε^{1/ρ}) / (T^{1/ρ} − ε^{1/ρ})
        return (s ** (1 / rho) - eps ** (1 / rho)) / (T ** (1 / rho) - eps ** (1 / rho))

    h = t * 1e-6
    finite = (inverse(t + h) - inverse(t - h)) / (2 * h)
    lam = weighting("uniform-u", t, eps, T, rho)
    torch.testing.assert_close(lam, finite, rtol=1e-6, atol=0)
    # in the continuous-time loss λ(τ(u))·τ′(u) = 1: every u ~ U[0, 1] weighs the same
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    tau, dtau = karras_time(u, eps, T, rho)
    torch.testing.assert_close(weighting("uniform-u", tau, eps, T, rho) * dtau,
                               torch.ones_like(u))


def test_edm_augmentation_needs_the_augment_labels_in_the_network():
    edm = get("methods", "edm")
    with pytest.raises(ValueError, match=re.escape("set network_kwargs augment_dim=9")):
        edm.configure("cifar10", network_kwargs={"augment_dim": 0})
    # giving another network option keeps the preset's augment_dim (merged, not replaced)
    assert edm.configure("cifar10", network_kwargs={"dropout": 0.1}).network_kwargs[
        "augment_dim"] == 9
    with pytest.raises(ValueError, match=r"augment_p must be in \[0, 1\], got 2"):
        edm.configure("cifar10", augment_p=2.0)
