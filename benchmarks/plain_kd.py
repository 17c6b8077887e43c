"""The baseline every speed figure is compared with: a plain PyTorch KD loop written the way RepDistiller's
``train_distill`` is (teacher forward under ``no_grad``, student forward, CE + KL, backward, SGD step, and the
per-step ``loss.item()`` and accuracy that its AverageMeters read), on in-memory tensors with kdlab's batched
crop/flip so that only the loop differs. Shared by bench_cache.py (CPU) and gpu/check.py."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

CLASSES, SHAPE = 100, (3, 32, 32)


def plain_kd_rate(
    device: str, n: int, batch: int, teacher_name: str, student_name: str, classes: int = CLASSES
) -> float:
    """Images/s of the second of two epochs over ``n`` synthetic CIFAR-shaped images (NCHW, fp32)."""
    from kdlab.models import build_model
    from kdlab.views.basic import CropFlip, normalize

    dev = torch.device(device)
    torch.manual_seed(0)
    teacher = build_model(teacher_name, num_classes=classes, input_shape=SHAPE).to(dev).eval()
    student = build_model(student_name, num_classes=classes, input_shape=SHAPE).to(dev).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator(dev).manual_seed(0)
    x_all = torch.rand(n, *SHAPE, generator=g, device=dev)
    y_all = torch.randint(0, classes, (n,), generator=g, device=dev)
    aug = CropFlip()
    mean, std = torch.tensor((0.5,) * 3, device=dev), torch.tensor((0.25,) * 3, device=dev)
    tau, rate = 4.0, 0.0
    for _epoch in range(2):
        _sync(dev)
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=g, device=dev)
        losses, top1 = [], []
        for i in range(0, n - batch + 1, batch):
            idx = order[i : i + batch]
            x = normalize(aug(x_all[idx], g), mean, std)
            y = y_all[idx]
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            kl = F.kl_div(F.log_softmax(s_logits / tau, 1), F.softmax(t_logits / tau, 1), reduction="batchmean")
            loss = 0.1 * F.cross_entropy(s_logits, y) + 0.9 * kl * tau * tau
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())  # AverageMeter.update(loss.item(), ...)
            top1.append((s_logits.argmax(1) == y).float().mean().item())  # accuracy(output, target)
        _sync(dev)
        rate = (n // batch) * batch / (time.perf_counter() - t0)
    return rate


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
