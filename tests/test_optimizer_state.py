"""Optimizer state carried across a change of the parameter set (source-only -> SADA)."""
import torch

from mic_det.engine.optimizer_state import optimizer_param_names, remap_optimizer_state


def _model(with_discriminator: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = {"backbone": torch.nn.Linear(3, 4), "head": torch.nn.Linear(4, 2)}
    if with_discriminator:
        layers["discriminator"] = torch.nn.Linear(4, 1)
    return torch.nn.ModuleDict(layers)


def _sgd(model):
    # Two groups, as Detectron2 builds them (biases without weight decay).
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return torch.optim.SGD([{"params": weights}, {"params": biases, "weight_decay": 0.0}], lr=0.1, momentum=0.9,
                           weight_decay=1e-4)


def test_momentum_follows_the_parameter_name_and_new_parameters_start_fresh():
    small = _model(False)
    opt = _sgd(small)
    small["head"](small["backbone"](torch.randn(5, 3))).sum().backward()
    opt.step()
    saved, saved_names = opt.state_dict(), optimizer_param_names(small, opt)
    assert saved_names == ["backbone.weight", "head.weight", "backbone.bias", "head.bias"]

    big = _model(True)
    big_opt = _sgd(big)
    names = optimizer_param_names(big, big_opt)
    # The discriminator's weight sits between the others in the first group: positions differ.
    assert names == ["backbone.weight", "head.weight", "discriminator.weight",
                     "backbone.bias", "head.bias", "discriminator.bias"]
    state, restored = remap_optimizer_state(saved, saved_names, big_opt, names)
    assert restored == 4
    big_opt.load_state_dict(state)
    by_name = dict(zip(names, [p for g in big_opt.param_groups for p in g["params"]]))
    old = dict(zip(saved_names, [p for g in opt.param_groups for p in g["params"]]))
    for n in saved_names:
        torch.testing.assert_close(big_opt.state[by_name[n]]["momentum_buffer"], opt.state[old[n]]["momentum_buffer"])
    assert "momentum_buffer" not in big_opt.state[by_name["discriminator.weight"]]
    assert big_opt.param_groups[1]["weight_decay"] == 0.0


def test_a_resized_parameter_starts_fresh():
    small = _model(False)
    opt = _sgd(small)
    small["head"](small["backbone"](torch.randn(5, 3))).sum().backward()
    opt.step()
    other = torch.nn.ModuleDict({"backbone": torch.nn.Linear(3, 4), "head": torch.nn.Linear(4, 7)})
    other_opt = _sgd(other)
    names = optimizer_param_names(other, other_opt)
    _, restored = remap_optimizer_state(opt.state_dict(), optimizer_param_names(small, opt), other_opt, names)
    assert restored == 2  # the backbone's weight and bias; the 7-class head is new
