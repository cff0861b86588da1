"""Zero-shot retrieval's scoring: correct pairs by caption text, ranks of the best-ranked correct item, R@k and median
rank, and re-ranking of each query's top k by the matching head (as released), on hand-made scores."""
import torch

from ivtrain.eval.retrieval import Encoded, correct_pairs, ranks, rerank, summary


def test_clips_with_the_same_caption_text_are_all_correct():
    correct = correct_pairs(["a red square", "A  red square ", "a blue disc", "two shapes"])
    assert correct.tolist() == [[True, True, False, False], [True, True, False, False],
                                [False, False, True, False], [False, False, False, True]]


def test_rank_is_that_of_the_best_ranked_correct_item():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3],    # correct: 1 and 3 -> 0.3 is 3rd, 0.1 4th -> rank 3
                           [0.2, 0.8, 0.1, 0.0],    # correct: 1 -> rank 1
                           [0.4, 0.3, 0.2, 0.1]])   # correct: 2 -> rank 3
    correct = torch.tensor([[False, True, False, True], [False, True, False, False], [False, False, True, False]])
    r = ranks(scores, correct)
    assert r.tolist() == [3, 1, 3]
    s = summary(torch.tensor([1, 3, 6, 12, 2]))
    assert s == {"r1": 20.0, "r5": 60.0, "r10": 80.0, "median_rank": 3.0}


class MatchByIdentity:
    """A stand-in model whose matching head's positive logit is a fixed score of (caption, clip), read back from
    the index each tensor carries."""

    def __init__(self, table):
        self.table = table

    def match_score(self, hidden, t_mask, tokens, m_mask, head):
        text, clip = hidden[:, 0, 0].long(), tokens[:, 0, 0].long()
        return torch.stack([torch.zeros(len(text)), self.table[text, clip]], dim=1)


def test_rerank_orders_the_top_k_by_the_matching_head_above_the_rest():
    n = 4
    enc = Encoded(media=torch.zeros(n, 2), text=torch.zeros(n, 2),
                  tokens=torch.arange(n, dtype=torch.float)[:, None, None].expand(n, 3, 2).clone(),
                  token_mask=torch.ones(n, 3, dtype=torch.bool),
                  hidden=torch.arange(n, dtype=torch.float)[:, None, None].expand(n, 5, 2).clone(),
                  text_mask=torch.ones(n, 5, dtype=torch.bool), captions=["a", "b", "c", "d"], skipped={})
    table = torch.tensor([[0.0, 5.0, 1.0, 9.0]] * n)            # the head prefers clip 3, then 1, then 2, then 0
    t2v = torch.tensor([[0.9, 0.8, 0.7, 0.1]] * n)              # dual encoder: 0, 1, 2 on top, 3 last
    calls = []
    out = rerank(MatchByIdentity(table), enc, t2v, k=3, head=None, device=torch.device("cpu"),
                 advance=lambda: calls.append(1), texts_are_queries=True)
    order = out[0].argsort(descending=True).tolist()
    assert order == [1, 2, 0, 3] and len(calls) == n            # top 3 by the head's logit; clip 3 stays below
    one = rerank(MatchByIdentity(table), enc, t2v, k=1, head=None, device=torch.device("cpu"), advance=lambda: None,
                 texts_are_queries=True)
    assert one[0].argsort(descending=True).tolist() == [0, 1, 2, 3]   # top 1 re-scored alone: the order stays
