import pytest
import torch

from src.augment import PADDING, augment_batch, crop_and_flip

IMAGE = torch.tensor([[1., 2., 3.],
                      [4., 5., 6.],
                      [7., 8., 9.]]).reshape(1, 1, 3, 3)


@pytest.mark.parametrize("dy, dx, flip, expected", [
    (1, 1, False, [[1, 2, 3], [4, 5, 6], [7, 8, 9]]),     # the centre crop is the image
    (2, 1, False, [[4, 5, 6], [7, 8, 9], [0, 0, 0]]),     # one row down: shifted up, zeros below
    (1, 0, False, [[0, 1, 2], [0, 4, 5], [0, 7, 8]]),     # one column left: shifted right
    (1, 1, True, [[3, 2, 1], [6, 5, 4], [9, 8, 7]]),      # mirrored
    (0, 2, True, [[0, 0, 0], [0, 3, 2], [0, 6, 5]]),      # crop up-right, then mirrored
])
def test_crop_and_flip_by_hand(dy, dx, flip, expected):
    out = crop_and_flip(IMAGE, torch.tensor([dy]), torch.tensor([dx]), torch.tensor([flip]), padding=1)
    assert torch.equal(out, torch.tensor(expected, dtype=torch.float32).reshape(1, 1, 3, 3))


def test_each_sample_gets_its_own_crop_and_flip():
    x = torch.rand(2, 3, 5, 5)
    out = crop_and_flip(x, torch.tensor([4, 6]), torch.tensor([4, 3]), torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(-1))
    shifted = torch.zeros(3, 5, 5)
    shifted[:, :3, 1:] = x[1, :, 2:, :4]  # two rows up, one column right
    assert torch.equal(out[1], shifted)


def every_crop(image):
    """All (2P+1)^2 crops of ``image`` (C, H, W) and their mirror images, one at a time."""
    c, h, w = image.shape
    padded = torch.nn.functional.pad(image, (PADDING,) * 4)
    for dy in range(2 * PADDING + 1):
        for dx in range(2 * PADDING + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop.flip(-1)


def test_augmented_batch_keeps_shape_and_dtype_and_holds_valid_crops():
    x = torch.rand(64, 1, 6, 6)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    seen = set()
    for image, augmented in zip(x, out):
        matches = [how for how, crop in every_crop(image) if torch.equal(crop, augmented)]
        assert matches
        seen.update(matches)
    assert {flip for _, _, flip in seen} == {True, False}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 20  # offsets vary over the 81 possible


def test_augmentation_is_repeatable_from_the_generator_state():
    x = torch.rand(8, 3, 8, 8)
    a, b = (augment_batch(x, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment_batch(x, torch.Generator().manual_seed(6)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_batches_are_augmented_on_the_gpu_as_on_the_cpu():
    x = torch.rand(16, 3, 8, 8)
    cpu = augment_batch(x, torch.Generator().manual_seed(1))
    gpu = augment_batch(x.cuda(), torch.Generator().manual_seed(1))
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
