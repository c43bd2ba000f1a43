"""Count answers of any size are scored as numbers (real COCO images hold more than ten objects)."""

from neurorecon.nv2l.evaluate import parse_counts, qa_correct
from neurorecon.nv2l.instructions import qa_questions


def test_counts_of_any_size_in_digits_or_words():
    assert parse_counts("There are 12 people and twenty-one birds, thirty three cups, forty.") == {12, 21, 33, 40}
    assert parse_counts("I see seventeen objects.") == {17}
    assert qa_correct("count", "There are 12 objects.", "12")
    assert qa_correct("count", "There are twelve objects.", "12")
    assert qa_correct("count", "There are 23 objects in the image.", "twenty-three")
    assert qa_correct("count", "There are three objects.", "three") and qa_correct("count", "3", "three")
    assert not qa_correct("count", "There are 13 objects.", "12")
    assert not qa_correct("count", "There are 12 or 13 objects.", "12")
    assert not qa_correct("count", "Many objects.", "12")


def test_a_scene_with_many_objects_asks_and_scores_its_count():
    boxes = [dict(category="person", bbox=[4 * k, 4 * k, 3, 3]) for k in range(14)]  # COCO-style: no attributes
    q = qa_questions({"instances": boxes, "captions": ["people"]}, 64)
    assert [t for t, _, _ in q] == ["count"]  # colour and shape are not annotated: not asked
    truth = q[0][2]
    assert qa_correct("count", "There are 14 objects.", truth)
    assert qa_correct("count", "There are fourteen objects.", truth)
