"""Small SQuAD-format fixtures (hand-written over two paragraphs) for the tests."""
import json

CONTEXT_1 = ("The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It is named after the "
             "engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.")
CONTEXT_2 = ("Mount Everest is Earth's highest mountain above sea level. It lies in the Mahalangur Himal "
             "sub-range of the Himalayas, on the border between Nepal and China.")


def _qa(qid, question, context, *answers):
    return {"id": qid, "question": question,
            "answers": [{"text": a, "answer_start": context.index(a)} for a in answers]}


def nested_squad() -> dict:
    return {"version": "1.1", "data": [
        {"title": "Eiffel_Tower", "paragraphs": [{"context": CONTEXT_1, "qas": [
            _qa("q1", "Where is the Eiffel Tower?", CONTEXT_1, "Paris, France", "Paris"),
            _qa("q2", "Who is the tower named after?", CONTEXT_1, "Gustave Eiffel"),
            _qa("q3", "When was the tower built?", CONTEXT_1, "from 1887 to 1889", "1887 to 1889"),
        ]}]},
        {"title": "Mount_Everest", "paragraphs": [{"context": CONTEXT_2, "qas": [
            _qa("q4", "What is Earth's highest mountain?", CONTEXT_2, "Mount Everest"),
            _qa("q5", "Which sub-range is Everest in?", CONTEXT_2, "Mahalangur Himal"),
            _qa("q6", "Which countries border Everest?", CONTEXT_2, "Nepal and China"),
        ]}]},
    ]}


def write_nested(path, obj=None) -> str:
    path.write_text(json.dumps(obj or nested_squad()))
    return str(path)
