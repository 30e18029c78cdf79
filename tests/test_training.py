"""A node's supervised training on its private split."""

import torch

from node.data import Split
from node.models import build_model
from node.training import train_classifier


def test_a_last_batch_of_one_example_joins_the_one_before_so_batch_norm_trains():
    # 65 = 64 + 1: alone, the last example is a batch that batch norm cannot train on (torch raises)
    gen = torch.Generator().manual_seed(0)
    data = Split(torch.randn(65, 1, 8, 8, generator=gen), torch.randint(0, 10, (65,), generator=gen))
    model = build_model("digits-cnn-bn", (1, 8, 8), 10)
    steps = []
    model.register_forward_hook(lambda _m, inputs, _out: steps.append(len(inputs[0])))
    train_classifier(model, data, epochs=2, lr=1e-3, batch_size=64, seed=0)
    assert steps == [65, 65]  # every example in every epoch, one step each
    model = build_model("digits-cnn-bn", (1, 8, 8), 10)
    steps.clear()
    model.register_forward_hook(lambda _m, inputs, _out: steps.append(len(inputs[0])))
    train_classifier(model, data, epochs=1, lr=1e-3, batch_size=32, seed=0)
    assert steps == [32, 33]  # 65 = 2 x 32 + 1 as well
