import pytest
import torch

from minids.config import get_preset
from minids.generate import filtered_probs, generate, sample_next
from minids.model import MiniDeepSeek


def tiny():
    torch.manual_seed(0)
    cfg = get_preset("baseline", vocab_size=30, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16)
    return MiniDeepSeek(cfg).eval()


def test_cached_and_uncached_greedy_agree_past_the_context():
    m = tiny()
    prompt = torch.randint(0, 30, (2, 5))
    a = generate(m, prompt, 30, temperature=0, use_cache=True)      # 35 > 16: the window slides
    b = generate(m, prompt, 30, temperature=0, use_cache=False)
    assert torch.equal(a, b) and a.shape == (2, 35)


def test_cached_and_uncached_sampling_agree_with_same_generator():
    m = tiny()
    prompt = torch.randint(0, 30, (1, 4))
    a = generate(m, prompt, 10, 0.9, top_k=5, generator=torch.Generator().manual_seed(1))
    b = generate(m, prompt, 10, 0.9, top_k=5, use_cache=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_filtered_probs():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    torch.testing.assert_close(filtered_probs(logits, 1.0), logits.softmax(-1))
    torch.testing.assert_close(filtered_probs(logits, 0.5), (logits / 0.5).softmax(-1))
    top2 = filtered_probs(logits, 1.0, top_k=2)
    assert (top2[0, 2:] == 0).all() and abs(top2.sum().item() - 1) < 1e-6
    p = logits.softmax(-1)[0]                              # 0.64, 0.24, 0.09, 0.03
    nucleus = filtered_probs(logits, 1.0, top_p=0.8)       # needs the first two to reach 0.8
    assert (nucleus[0, :2] > 0).all() and (nucleus[0, 2:] == 0).all(), p


def test_greedy_is_argmax():
    logits = torch.randn(3, 7)
    assert torch.equal(sample_next(logits, 0.0), logits.argmax(-1, keepdim=True))


@pytest.mark.parametrize("kw, match", [(dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"),
                                        (dict(top_p=0.0), "top_p")])
def test_bad_sampling_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        generate(tiny(), torch.zeros(1, 2, dtype=torch.long), 2, **{"temperature": 1.0, **kw})


def test_prompt_longer_than_context():
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        generate(tiny(), torch.zeros(1, 17, dtype=torch.long), 1)
