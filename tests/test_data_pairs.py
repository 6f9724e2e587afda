"""sega.data.load_pairs: the preference-pair format, its validation and the bundled splits."""
import json

import pytest

from sega.data import BUNDLED_SIZES, load_pairs


def test_bundled_splits_have_their_sizes_and_at_least_sixty_pairs_in_all():
    sizes = {split: len(load_pairs("bundled", split=split)) for split in ("train", "test")}
    assert sizes == BUNDLED_SIZES and sum(sizes.values()) >= 60


def test_extra_keys_are_kept(tmp_path):
    f = tmp_path / "pairs.jsonl"
    row = {"prompt": "p", "chosen": "good", "rejected": "bad", "source": "hand", "margin": 2}
    f.write_text(json.dumps(row) + "\n")
    assert load_pairs(f) == [row]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "chosen": "c"}', "missing key 'rejected'"),
    ('{"prompt": "p", "chosen": ["c"], "rejected": "r"}', "key 'chosen' must be str, got list"),
    ('{"prompt": "p", "chosen": "same", "rejected": "same"}', "'chosen' and 'rejected' are identical"),
    ('{"prompt": "p", "chosen": "c", "rejected": "r"', "invalid JSON"),
])
def test_bad_pairs_are_reported_with_file_and_line(tmp_path, line, message):
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n' + line + "\n")
    with pytest.raises(ValueError) as e:
        load_pairs(f)
    assert f"{f}:2: {message}" in str(e.value)


def test_a_directory_of_splits_and_an_unknown_bundled_split(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    assert load_pairs(tmp_path, split="test")[0]["chosen"] == "c"
    with pytest.raises(ValueError, match="no bundled pair split 'dev'"):
        load_pairs("bundled", split="dev")
