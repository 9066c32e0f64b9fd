"""GLUE files load from the layouts the GLUE download really has (headers, headerless CoLA, string labels,
unescaped quotes, MRPC's byte-order mark), and from Hugging Face style JSONL; bad rows are one-line errors."""
import json

import pytest

from momo_ds.eval.text_cls import GLUE_TASKS, read_examples

QUOTED = '"Stop" , she said'  # a field starting with an unbalanced-looking quote: only QUOTE_NONE reads it as text

# task -> (file name, file text, expected texts_a, texts_b, labels); every layout as the GLUE download writes it
LAYOUTS = {
    "cola": ("train.tsv",
             "gj04\t1\t\tThe cat sat on the mat .\n"
             f"gj04\t0\t*\t{QUOTED} the mat on .\n",
             ["The cat sat on the mat .", f"{QUOTED} the mat on ."], None, [1, 0]),
    "sst2": ("train.tsv",
             "sentence\tlabel\n"
             "a warm , funny film \t1\n"
             f"{QUOTED} nothing works \t0\n",
             ["a warm , funny film ", f"{QUOTED} nothing works "], None, [1, 0]),
    "mrpc": ("train.tsv",
             "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
             f"1\t101\t102\tThe court met on Monday .\t{QUOTED} the court met Monday .\n"
             "0\t103\t104\tShares rose 5 percent .\tThe weather was mild .\n",
             ["The court met on Monday .", "Shares rose 5 percent ."],
             [f"{QUOTED} the court met Monday .", "The weather was mild ."], [1, 0]),
    "qqp": ("train.tsv",
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
            "7\t13\t14\tHow do I learn to swim?\tWhat is the best way to learn swimming?\t1\n"
            f"8\t15\t16\t{QUOTED} why?\tWhere is Paris?\t0\n",
            ["How do I learn to swim?", f"{QUOTED} why?"],
            ["What is the best way to learn swimming?", "Where is Paris?"], [1, 0]),
    "mnli": ("dev_matched.tsv",
             "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
             "0\t1\t1n\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tA man is running .\tSomeone moves .\t"
             "entailment\tentailment\tneutral\tentailment\tentailment\tentailment\n"
             f"1\t2\t2c\tslate\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t{QUOTED} .\tNobody spoke .\t"
             "contradiction\tcontradiction\tcontradiction\tneutral\tcontradiction\tcontradiction\n"
             "2\t3\t3n\ttravel\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThe bus left .\tThe bus was red .\t"
             "neutral\tneutral\tneutral\tneutral\tneutral\tneutral\n",
             ["A man is running .", f"{QUOTED} .", "The bus left ."],
             ["Someone moves .", "Nobody spoke .", "The bus was red ."], [0, 2, 1]),
    "qnli": ("dev.tsv",
             "index\tquestion\tsentence\tlabel\n"
             "0\tWhen did the war end?\tThe war ended in 1945 .\tentailment\n"
             f"1\tWho wrote it?\t{QUOTED} .\tnot_entailment\n",
             ["When did the war end?", "Who wrote it?"], ["The war ended in 1945 .", f"{QUOTED} ."], [0, 1]),
    "rte": ("train.tsv",
            "index\tsentence1\tsentence2\tlabel\n"
            "0\tThe museum opened in 1990 .\tThe museum exists .\tentailment\n"
            f"1\t{QUOTED} .\tShe was silent .\tnot_entailment\n",
            ["The museum opened in 1990 .", f"{QUOTED} ."], ["The museum exists .", "She was silent ."], [0, 1]),
    "stsb": ("dev.tsv",
             "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
             "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA plane takes off .\tAn airplane departs .\t5.000\n"
             f"1\tmain-news\theadlines\t2013\t0001\tnone\tnone\t{QUOTED} .\tA dog barks .\t0.400\n",
             ["A plane takes off .", f"{QUOTED} ."], ["An airplane departs .", "A dog barks ."], [5.0, 0.4]),
}


@pytest.mark.parametrize("task", list(LAYOUTS))
def test_real_glue_layouts_load(tmp_path, task):
    name, text, want_a, want_b, want_y = LAYOUTS[task]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    a, b, y = read_examples(path, GLUE_TASKS[task])
    assert a == want_a and b == (want_b or [None] * len(want_a))
    assert y.tolist() == pytest.approx(want_y)
    assert y.is_floating_point() == (task == "stsb")


def test_hugging_face_jsonl_and_named_tsv_layouts_still_load(tmp_path):
    rows = [{"premise": "It rains .", "hypothesis": "It is wet .", "label": 0, "idx": 0},
            {"premise": "It rains .", "hypothesis": "It is dry .", "label": 2, "idx": 1}]
    (tmp_path / "mnli.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b, y = read_examples(tmp_path / "mnli.jsonl", GLUE_TASKS["mnli"])
    assert a == ["It rains ."] * 2 and b == ["It is wet .", "It is dry ."] and y.tolist() == [0, 2]
    (tmp_path / "mrpc.tsv").write_text("sentence1\tsentence2\tlabel\nA .\tB .\t1\n")
    assert read_examples(tmp_path / "mrpc.tsv", GLUE_TASKS["mrpc"])[2].tolist() == [1]
    (tmp_path / "cola.tsv").write_text("sentence\tlabel\nA dog .\t1\n")  # CoLA with a header row
    assert read_examples(tmp_path / "cola.tsv", GLUE_TASKS["cola"])[0] == ["A dog ."]


def test_label_ids_are_fixed_per_task_not_taken_from_the_file(tmp_path):
    """A dev file holding only 'not_entailment' must still map it to id 1, as in training."""
    (tmp_path / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA .\tB .\tnot_entailment\n")
    assert read_examples(tmp_path / "dev.tsv", GLUE_TASKS["rte"])[2].tolist() == [1]


def test_bad_rows_are_one_line_errors_naming_file_and_line(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\tA .\tB .\tentailment\n1\tA .\tB .\tmaybe\n")
    with pytest.raises(ValueError, match=r"dev.tsv:3: label 'maybe' is not one of entailment, not_entailment"):
        read_examples(path, GLUE_TASKS["rte"])
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\tA .\n")
    with pytest.raises(ValueError, match=r"dev.tsv:2: row has no 'sentence2' field"):
        read_examples(path, GLUE_TASKS["rte"])
    path.write_text("index\tsentence1\tsentence2\tscore\n0\tA .\tB .\thigh\n")
    with pytest.raises(ValueError, match=r"dev.tsv:2: score 'high' is not a number"):
        read_examples(path, GLUE_TASKS["stsb"])
    path.write_text("id\ttext\n0\thi\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['#1 String', '#2 String', 'Quality'\]"):
        read_examples(path, GLUE_TASKS["mrpc"])
    (tmp_path / "x.jsonl").write_text('{"sentence": "a", "label": 1}\n{"sentence": \n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: not valid JSON"):
        read_examples(tmp_path / "x.jsonl", GLUE_TASKS["sst2"])
    path.write_bytes(b"sentence\tlabel\n\xff\xfe\t1\n")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        read_examples(path, GLUE_TASKS["sst2"])


def test_missing_mnli_dev_file_names_the_real_one(tmp_path):
    with pytest.raises(ValueError, match="GLUE validation file is dev_matched.tsv"):
        read_examples(tmp_path / "MNLI" / "dev.tsv", GLUE_TASKS["mnli"])
