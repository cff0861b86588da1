"""Stage-3 conversations: rendered by the LLM's own chat template, only the answer tokens carry labels, the vision
tokens go where the media placeholder was, and conversations longer than the text limit are cut with the answers
kept where possible (and counted). Templates: the tiny LLM's own, ChatML (Qwen family) and Llama 3's, and one
without a system role (Mistral's)."""
import json

import pytest

from ivtrain.data.conversation import (IGNORE, ConversationError, check_template, encode_conversation, end_of_turn,
                                       prompt_ids, to_messages)

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if "
          "add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# Mistral-Instruct's: no system role (it raises), [INST] ... [/INST] answer</s>
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
           "{{ raise_exception('no system role') }}{% elif message['role'] == 'user' %}"
           "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}"
           "{% endif %}{% endfor %}")

TWO_TURNS = [{"from": "system", "value": "Answer briefly."},
             {"from": "human", "value": "<video>\nWhich way does the square move?"},
             {"from": "gpt", "value": "left"},
             {"from": "human", "value": "And the disc?"},
             {"from": "gpt", "value": "It moves left too."}]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    from ivtrain.tiny_chat import save_tiny_llm

    return save_tiny_llm(tmp_path_factory.mktemp("stage3_text") / "llm")


@pytest.fixture
def tokenizer(tiny_llm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llm)


def labelled_runs(tokenizer, enc) -> list[str]:
    """The text of each run of consecutive labelled tokens."""
    runs, current = [], []
    for token, label in zip(enc.ids, enc.labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


@pytest.mark.parametrize("template, end", [(None, "<|end|>"), (CHATML, "<|im_end|>\n"), (LLAMA3, "<|eot_id|>")],
                         ids=["tiny", "chatml", "llama3"])
def test_only_answer_tokens_carry_labels_in_a_two_turn_conversation(tokenizer, template, end):
    if template:
        tokenizer.chat_template = template
    enc = encode_conversation(tokenizer, TWO_TURNS, "video", 512)
    # exactly the two answers, each with the template's end of turn (the model must learn to stop)
    assert labelled_runs(tokenizer, enc) == ["left" + end, "It moves left too." + end]
    assert enc.answer_tokens == len(tokenizer("left" + end, add_special_tokens=False)["input_ids"]) + \
        len(tokenizer("It moves left too." + end, add_special_tokens=False)["input_ids"])
    # the whole render, tokens in order, with the media place cut out
    full = tokenizer.apply_chat_template(to_messages(TWO_TURNS, "video"), tokenize=False)
    assert tokenizer.decode(enc.ids) == full.replace("\ue000", "")
    before, after = tokenizer.decode(enc.ids[:enc.vision_at]), tokenizer.decode(enc.ids[enc.vision_at:])
    assert before.endswith("<Video>") and after.startswith("</Video>\nWhich way")
    assert not enc.truncated and enc.exchanges_dropped == enc.answer_tokens_dropped == 0


@pytest.mark.parametrize("template, end", [(None, "<|end|>"), (CHATML, "<|im_end|>"), (LLAMA3, "<|eot_id|>"),
                                           (MISTRAL, "<|end|>")], ids=["tiny", "chatml", "llama3", "mistral"])
def test_a_chat_stops_where_the_template_ends_an_answer(tokenizer, template, end):
    if template:
        tokenizer.chat_template = template
    assert end_of_turn(tokenizer, fold_system=template is MISTRAL) == end   # Mistral's: its eos, "<|end|>" here


def test_a_chat_prompt_tokenizes_as_its_training_conversation_did(tokenizer):
    enc = encode_conversation(tokenizer, TWO_TURNS[:3], "video", 512)
    prompt = prompt_ids(tokenizer, to_messages(TWO_TURNS[:2], "video", answered=False))
    first_answer = enc.labels.index(next(x for x in enc.labels if x != IGNORE))
    assert prompt.ids == enc.ids[:first_answer] and prompt.vision_at == enc.vision_at


def test_media_without_placeholder_opens_the_first_question_and_images_get_their_markers(tokenizer):
    enc = encode_conversation(tokenizer, [{"from": "human", "value": "What colour is it?"},
                                          {"from": "gpt", "value": "red"}], "image", 512)
    assert tokenizer.decode(enc.ids[:enc.vision_at]).endswith("<|user|><Image>")
    assert tokenizer.decode(enc.ids[enc.vision_at:]).startswith("</Image>\nWhat colour")


def test_an_instruction_answered_without_question_gets_the_media_as_its_question(tokenizer):
    # VideoChat2-IT caption tasks as the data engine imports them: the instruction as system turn, then the answer
    enc = encode_conversation(tokenizer, [{"from": "system", "value": "Describe the video."},
                                          {"from": "gpt", "value": "a red square moves left"}], "video", 512)
    assert tokenizer.decode(enc.ids) == ("<s><|system|>Describe the video.<|end|><|user|><Video></Video><|end|>"
                                         "<|assistant|>a red square moves left<|end|>")
    assert labelled_runs(tokenizer, enc) == ["a red square moves left<|end|>"]


def test_long_conversations_drop_later_exchanges_whole_and_count_them(tokenizer):
    full = encode_conversation(tokenizer, TWO_TURNS, "video", 512)
    first_end = full.answer_ends[0]
    enc = encode_conversation(tokenizer, TWO_TURNS, "video", first_end + 3)
    assert enc.ids == full.ids[:first_end] and enc.truncated and enc.exchanges_dropped == 1
    assert labelled_runs(tokenizer, enc) == ["left<|end|>"]
    assert enc.answer_tokens_dropped == full.answer_tokens - enc.answer_tokens > 0


def test_a_long_question_is_shortened_from_its_start_and_the_answer_kept(tokenizer):
    turns = [{"from": "human", "value": "<video>\n" + "a red square and a blue disc " * 20 + "which way?"},
             {"from": "gpt", "value": "left"}]
    whole = encode_conversation(tokenizer, turns, "video", 1024)
    enc = encode_conversation(tokenizer, turns, "video", 40)
    assert len(whole.ids) > 40 >= len(enc.ids) and enc.truncated
    assert labelled_runs(tokenizer, enc) == ["left<|end|>"] and enc.answer_tokens_dropped == 0
    text = tokenizer.decode(enc.ids)
    assert text.endswith("which way?<|end|><|assistant|>left<|end|>") and "<Video></Video>" in text


def test_an_answer_longer_than_the_limit_is_cut_and_nothing_fitting_is_refused(tokenizer):
    turns = [{"from": "human", "value": "<video>\nDescribe it."}, {"from": "gpt", "value": "the shapes move " * 30}]
    prompt_len = len(prompt_ids(tokenizer, to_messages(turns[:1], "video", answered=False)).ids)
    enc = encode_conversation(tokenizer, turns, "video", prompt_len + 5)
    assert len(enc.ids) == prompt_len + 5 and enc.answer_tokens == 5 and enc.answer_tokens_dropped > 0
    assert tokenizer.decode(enc.ids).startswith(tokenizer.decode(prompt_ids(
        tokenizer, to_messages(turns[:1], "video", answered=False)).ids))   # the question kept whole
    # a long question and a long answer: the question gives up tokens so that half the limit goes to the answer
    turns[0]["value"] = "<video>\n" + "the square moves left " * 20 + "Describe it."
    enc = encode_conversation(tokenizer, turns, "video", 60)
    assert len(enc.ids) == 60 and enc.answer_tokens >= 30 and tokenizer.decode(enc.ids).count("Describe it.") == 1
    with pytest.raises(ConversationError, match="no answer token fits in 4 text tokens"):
        encode_conversation(tokenizer, turns, "video", 4)


def test_a_template_without_system_role_gets_the_system_text_in_the_first_question(tokenizer):
    tokenizer.chat_template = MISTRAL
    assert check_template(tokenizer) is True
    enc = encode_conversation(tokenizer, TWO_TURNS, "video", 512, fold_system=True)
    assert tokenizer.decode(enc.ids).startswith("<s>[INST] Answer briefly.\n\n<Video></Video>\nWhich way")
    assert labelled_runs(tokenizer, enc) == ["left<|end|>", "It moves left too.<|end|>"]
    tokenizer.chat_template = CHATML
    assert check_template(tokenizer) is False


def test_a_template_that_rewrites_earlier_turns_is_refused_with_the_reason(tokenizer):
    # the last answer rendered differently from earlier ones: a conversation's prefix is not its render's prefix
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if loop.last %} (last)"
                               "{% endif %}\n{% endfor %}")
    with pytest.raises(ConversationError, match="does not render a conversation's first messages as a prefix"):
        check_template(tokenizer)


def test_turns_that_are_not_a_conversation_are_refused(tokenizer):
    for turns, message in [([], "non-empty list"), ([{"from": "bot", "value": "hi"}], "is not {from"),
                           ([{"from": "human", "value": "<video>\nhi"}], "no answer"),
                           ([{"from": "system", "value": "hi"}], "no answer")]:
        with pytest.raises(ConversationError, match=message):
            encode_conversation(tokenizer, turns, "video", 512)


def test_an_llm_without_chat_template_is_refused_with_how_to_give_one(tiny_llm, tmp_path):
    import shutil

    from ivtrain.models.llm import LLMError, load_llm_tokenizer

    bare = tmp_path / "bare"
    shutil.copytree(tiny_llm, bare)
    (bare / "chat_template.jinja").unlink()
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(LLMError, match=r"has no chat template.*llm.chat_template=FILE.jinja"):
        load_llm_tokenizer(str(bare))
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    assert load_llm_tokenizer(str(bare), str(template)).chat_template == CHATML
