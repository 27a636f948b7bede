"""Reference formulas and tensor shorthands for the loss tests (test_mapo_loss.py, test_losses.py), written with
``math`` from the papers' closed forms, never by calling the code under test."""
import math

import torch


def s_ref(e: float, a: float = 0.5) -> float:
    """s(e) = a*e / (exp(a*e) - 1), the closed form, for e > 0."""
    return (a * e) / math.expm1(a * e)


def logsigmoid_ref(z: float) -> float:
    return -math.log1p(math.exp(-z))


def t64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def t32(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)



def sigmoid_ref(x: float) -> float:
    return 1 / (1 + math.exp(-x))
