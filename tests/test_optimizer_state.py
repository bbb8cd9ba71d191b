"""--keep-optimizer-state: a continued run starts from the old run's Adam moments and step count (default: a
fresh Adam), the grown head's new rows from zero moments."""
import math

import pytest
import torch

import checks
import train
from conftest import write_folder
from resnet import grow_head, resnet18
from step import load_adam_state_, make_optimizer


def test_kept_state_is_what_the_next_adam_update_uses():
    model = resnet18(2, 8)
    saved = {name: {"step": 5.0, "exp_avg": torch.full_like(p, 0.2), "exp_avg_sq": torch.full_like(p, 0.3)}
             for name, p in model.named_parameters()}
    grow_head(model, 3)  # one new class: fc gains a row
    opt = make_optimizer(model, 1e-3, torch.device("cpu"), False)
    load_adam_state_(model, opt, saved)
    w = model.fc.weight
    assert torch.equal(opt.state[w]["exp_avg"][:2], torch.full((2, w.shape[1]), 0.2))
    assert torch.equal(opt.state[w]["exp_avg"][2:], torch.zeros(1, w.shape[1]))  # the new row: a fresh start
    # one update with gradient 0.1 everywhere, by hand (Kingma & Ba, Alg. 1): step 6, the moments continued
    before = w.detach().clone()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.1)
    opt.step()
    m, v = 0.9 * 0.2 + 0.1 * 0.1, 0.999 * 0.3 + 0.001 * 0.01
    old_row = 1e-3 * (m / (1 - 0.9 ** 6)) / (math.sqrt(v / (1 - 0.999 ** 6)) + 1e-8)
    m, v = 0.1 * 0.1, 0.001 * 0.01  # the new row: zero moments, but the same (continued) step count
    new_row = 1e-3 * (m / (1 - 0.9 ** 6)) / (math.sqrt(v / (1 - 0.999 ** 6)) + 1e-8)
    delta = before - w.detach()
    assert torch.allclose(delta[:2], torch.full_like(delta[:2], old_row), rtol=1e-4)
    assert torch.allclose(delta[2:], torch.full_like(delta[2:], new_row), rtol=1e-4)


def test_checkpoint_holds_adam_state_and_a_run_continues_it(tmp_path, capsys):
    write_folder(tmp_path / "data", num_classes=4, n_train=4, n_test=2)
    common = ["--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--split", "2+2", "--width", "8",
              "--batch-size", "4", "--iters", "3", "--eval-every", "3", "--device", "cpu", "--quiet"]
    assert train.cli(common + ["--task", "0", "--out", str(tmp_path / "old")]) == 0
    ckpt = torch.load(tmp_path / "old" / "ckpt.pt", weights_only=True)
    state = ckpt["optimizer"]["fc.weight"]
    assert state["step"] == 3 and state["exp_avg"].shape == ckpt["model"]["fc.weight"].shape == (2, 64)
    old = ["--task", "1", "--old-ckpt", str(tmp_path / "old" / "ckpt.pt")]
    assert train.cli(common + old + ["--init", "old", "--keep-optimizer-state", "--out", str(tmp_path / "kept")]) == 0
    kept = torch.load(tmp_path / "kept" / "ckpt.pt", weights_only=True)
    assert kept["optimizer"]["fc.weight"]["step"] == 6  # 3 old steps + 3 of its own
    assert kept["config"]["label"] == "continuous + adam-state"
    capsys.readouterr()
    assert train.cli(common + ["--task", "1", "--keep-optimizer-state", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()  # refused by check_config, before anything is read or written
    assert err.count("\n") == 0 and "no old Adam" in err and not (tmp_path / "s").exists()
    with pytest.raises(checks.UsageError, match="no old Adam"):
        checks.check_config(train.parse_or_raise(["--task", "1", "--keep-optimizer-state"]))
    # a run without a learning speed saves no Adam state either (nothing continues from it in the plans)
    assert train.cli(common + ["--task", "0", "--learning-speed", "off", "--out", str(tmp_path / "off")]) == 0
    capsys.readouterr()
    assert train.cli(common + ["--task", "1", "--old-ckpt", str(tmp_path / "off" / "ckpt.pt"), "--init", "old",
                               "--keep-optimizer-state", "--out", str(tmp_path / "k2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds no optimizer state" in err
