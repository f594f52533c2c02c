#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/.

Seeds are named `seed-*`; it only adds and overwrites those. Then run
`FUZZ_MERGE=1 scripts/fuzz.sh` to fuzz and minimize the corpus again (the
minimized set keeps the inputs, seeds or not, that cover the same edges,
named by their SHA-1).

    python3 fuzz/make_seeds.py [--demo-config PATH]

Sources:
- sql_check: the SQL of every case in lang/tests/cases/*.test, and the
  statements quoted in tests/rust/attacks.rs;
- config: the fuzz and lang fixture configs, the attack lab's config, the
  demo config (`safe-data demo DIR` writes DIR/safe-data.toml; pass it with
  --demo-config), and a few broken variants;
- wire_frames: the messages of tests/fixtures/signed_messages.json, framed
  as the target splits its input (an options byte, frames joined by 0xFF);
- sql_check also gets hostile statements (issue 20: repeated CHART headers,
  long WITH chains, deep nesting, wide SELECTs), each under 8 KB;
- editor_services: the test cases and the hostile shapes in the target's
  format (a repeat exponent, a cursor, pieces joined by 0xFF);
- history_glob: patterns and texts joined by 0xFF, backtracking traps
  included.

    python3 fuzz/make_seeds.py --targets editor_services,history_glob

writes the seeds of some targets only.
"""

import argparse
import glob
import hashlib
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
SEPARATOR = b"\xff"


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:10]
    with open(os.path.join(d, f"seed-{name}-{digest}"), "wb") as f:
        f.write(data)


def test_cases():
    """SQL of the data-driven cases (same block rules as lang/tests/dialect.rs)."""
    for path in sorted(glob.glob(os.path.join(ROOT, "lang", "tests", "cases", "*.test"))):
        lines = open(path, encoding="utf-8").read().split("\n")
        starts = [i for i, l in enumerate(lines) if l.startswith("# ") and (i == 0 or not lines[i - 1].strip())]
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else len(lines)
            block = lines[start:end]
            sep = next((i for i, l in enumerate(block) if l.rstrip() == "----"), None)
            if sep is None:
                continue
            sql = "\n".join(block[1:sep]).strip()
            if sql:
                yield os.path.basename(path)[:-5], sql


RUST_STRING = re.compile(r'r#"(.*?)"#|"((?:[^"\\]|\\.)*)"', re.S)
SQL_START = re.compile(r"^\s*(SELECT|WITH|EXPLAIN|DESCRIBE|SHOW|\()", re.I)


def unescape(s):
    s = re.sub(r"\\\n\s*", "", s)  # line continuation
    return s.replace('\\"', '"').replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\")


def attack_statements():
    text = open(os.path.join(ROOT, "tests", "rust", "attacks.rs"), encoding="utf-8").read()
    seen = set()
    for m in RUST_STRING.finditer(text):
        s = m.group(1) if m.group(1) is not None else unescape(m.group(2))
        s = s.replace("{{", "{").replace("}}", "}")
        # format! placeholders: a column name, else a number.
        s = re.sub(r"\{c\}", "name", s)
        s = re.sub(r"\{\w*\}", "1", s)
        if SQL_START.match(s) and s not in seen:
            seen.add(s)
            yield s


def sql_seeds():
    n = 0
    seen = set()
    for group, sql in test_cases():
        if sql not in seen:
            seen.add(sql)
            write("sql_check", f"case-{group}", sql)
            n += 1
    for sql in attack_statements():
        if sql not in seen:
            seen.add(sql)
            write("sql_check", "attack", sql)
            n += 1
    # Statements naming the fuzz fixture's hidden columns (they must bind
    # as unknown) and a multi-statement cell.
    for sql in [
        "SELECT zqhid_ssn FROM secret",
        "SELECT grp, COUNT(*) FROM secret GROUP BY grp; DESCRIBE secret; SHOW TABLES",
        "EXPLAIN SELECT ward, SUM(cost) FROM visits GROUP BY ward",
        "SELECT v.ward, COUNT(DISTINCT v.patient_id) FROM visits v JOIN patients p ON v.patient_id = p.patient_id GROUP BY v.ward",
        "DESCRIBE visits",
    ]:
        write("sql_check", "extra", sql)
        n += 1
    return n


ATTACK_LAB_CONFIG = """
[server]
display_name = "attack lab"
state_dir = 'state'
max_rows = 1000
query_timeout_s = 30

[policy]
min_group_size = 5

[tables.patients]
source = 'patients.csv'
description = "One row per patient, with known individuals"
privacy_unit = "patient_id"
join_keys = ["patient_id", "region"]

[tables.patients.columns]
patient_id = { role = "identifier" }
name       = { role = "hidden" }
sex        = { role = "dimension" }
age        = { role = "dimension", bounds = [0, 110] }
region     = { role = "dimension" }
diabetes   = { role = "dimension", bounds = [0, 1] }
bmi        = { role = "measure", bounds = [10, 50] }
income     = { role = "measure" }

[tables.visits]
source = 'visits.csv'
privacy_unit = "patient_id"
join_keys = ["patient_id"]

[tables.visits.columns]
patient_id = { role = "identifier" }
cost       = { role = "measure", bounds = [0, 1000], aggregates = ["median"] }

[tables.regions]
source = 'regions.csv'
public = true
"""

BROKEN_CONFIGS = [
    "[policy]\nmin_group_size = 0\n",
    "[server]\nmax_rows = -1\n",
    "[server]\nunknown_key = 1\n",
    "[tables.\"bad name\"]\nsource = \"people.csv\"\npublic = true\n",
    "[tables.t]\nsource = \"people.txt\"\n",
    "[tables.t]\nsource = \"missing.csv\"\n",
    "[tables.t]\nsource = \"secret.csv\"\nprivacy_unit = \"pid\"\n[tables.t.columns]\nval = { role = \"measure\", bounds = [5, 1] }\n",
    "[tables.t]\nsource = \"secret.csv\"\nprivacy_unit = \"pid\"\n[tables.t.columns]\nval = { role = \"measure\", bounds = [0, inf] }\n",
    "[tables.t]\nsource = \"secret.csv\"\nprivacy_unit = \"pid\"\n[tables.t.columns]\nval = { role = \"measure\", aggregates = [\"nope\"] }\n",
    "[tables.t]\nsource = \"secret.csv\"\nprivacy_unit = \"pid\"\n[tables.t.columns]\nval = { role = \"owner\" }\n",
    "[tables.t]\nsource = \"secret.csv\"\nmin_group_size = 9223372036854775807\nprivacy_unit = \"pid\"\n",
    "[tables.t]\nsource = \"secret.csv\"\n",
    "[tables.t]\nsource = \"secret.csv\"\njoin_keys = [\"grp\"]\nprivacy_unit = \"pid\"\n",
    "server = 1\n",
    "[[tables]]\n",
    "[tables.t\n",
    "[server]\nquery_timeout_s = 99999999999999999999\n",
]


def config_seeds(demo):
    n = 0
    for rel in ["fuzz/fixtures/safe-data.toml", "lang/tests/fixtures/safe-data.toml"]:
        write("config", os.path.basename(os.path.dirname(os.path.dirname(rel))) + "-fixture", open(os.path.join(ROOT, rel), encoding="utf-8").read())
        n += 1
    write("config", "attack-lab", ATTACK_LAB_CONFIG)
    n += 1
    if demo and os.path.isfile(demo):
        text = open(demo, encoding="utf-8").read()
        write("config", "demo", text)
        # The same with sources the fuzz fixtures have, so validation goes on.
        text = text.replace("data/patients.parquet", "patients.csv").replace("data/labs.csv", "visits.csv").replace("data/regions.csv", "regions.csv")
        write("config", "demo-local", text)
        n += 2
    for i, text in enumerate(BROKEN_CONFIGS):
        write("config", f"broken{i:02}", text)
        n += 1
    return n


def wire_seeds():
    data = json.load(open(os.path.join(ROOT, "tests", "fixtures", "signed_messages.json"), encoding="utf-8"))
    n = 0
    for m in data["messages"]:
        frames = SEPARATOR.join(f.encode() for f in m["frames"])
        write("wire_frames", m["name"], b"\x00" + frames)
        write("wire_frames", m["name"] + "-resigned", b"\x01" + frames)
        n += 2
    # Truncated, unsigned, no delimiter, not JSON, over the size limit.
    write("wire_frames", "short", b"\x00peer\xff<IDS|MSG>\xff\xff{}")
    write("wire_frames", "nodelim", b"\x00a\xffb\xffc")
    write("wire_frames", "badjson", b"\x01<IDS|MSG>\xff\xff{\"msg_id\": 1\xff{}\xff[]\xff{}")
    write("wire_frames", "limit", b"\x04<IDS|MSG>\xff\xff{\"msg_id\": \"a\", \"msg_type\": \"b\"}\xff{}\xff{}\xff{}" + b"x" * 300)
    return n + 4


HOSTILE_QUERY = "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex"


def nested_chains(levels, length):
    inner = "1"
    for _ in range(levels):
        inner = "(" + inner + " + 1" * length + ")"
    return "SELECT " + inner + " AS x"


def hostile_statements():
    """Statements past the parse and bind bounds (issue 20), each under 8 KB (the fuzzer's max_len)."""
    chain = ", ".join(f"c{i} AS (SELECT sex FROM c{i - 1})" for i in range(1, 150))
    doubling = ", ".join(f"c{i} AS (SELECT x.sex FROM c{i - 1} x JOIN c{i - 1} y ON x.sex = y.sex)" for i in range(1, 30))
    return {
        "chart-300": "CHART BAR " * 300 + HOSTILE_QUERY,
        "chart-twice": "CHART BAR (x = sex) CHART LINE " + HOSTILE_QUERY,
        "cte-chain": f"WITH c0 AS (SELECT sex FROM patients), {chain} SELECT COUNT(*) AS n FROM c149",
        "cte-doubling": f"WITH c0 AS (SELECT sex FROM patients), {doubling} SELECT sex, COUNT(*) AS n FROM c29 GROUP BY sex",
        "parens": "SELECT " + "(" * 2000 + "1" + ")" * 2000,
        "sum": "SELECT " + "1 + " * 2000 + "1",
        "and": "SELECT COUNT(*) FROM patients WHERE " + " AND ".join(["age > 1"] * 600),
        "union": " UNION ALL ".join([HOSTILE_QUERY] * 120),
        "subqueries": "SELECT * FROM " + "(SELECT * FROM " * 400 + "patients" + ") s" * 400,
        "not": "SELECT " + "NOT " * 2000 + "TRUE",
        "case": "SELECT " + "CASE WHEN TRUE THEN " * 300 + "1" + " END" * 300,
        "nested-chains": nested_chains(12, 100),
        "wide": "SELECT " + ", ".join(["age"] * 1100) + " FROM patients",
        "group-keys": "SELECT COUNT(*) AS n FROM patients GROUP BY " + ", ".join(f"age + {i}" for i in range(200)),
        "statements": "SELECT 1;" * 300,
    }


def hostile_sql_seeds():
    for name, sql in hostile_statements().items():
        write("sql_check", f"hostile-{name}", sql)
    return len(hostile_statements())


def editor_seed(name, exponent, cursor, head="", middle="", tail=""):
    """An editor_services input: the cell is head x 2**exponent + middle + tail x 2**exponent."""
    data = bytes([exponent]) + (cursor % 65536).to_bytes(2, "little") + SEPARATOR.join(p.encode() for p in (head, middle, tail))
    write("editor_services", name, data)


def editor_seeds():
    n = 0
    for i, (group, sql) in enumerate(test_cases()):
        if i % 4 == 0:  # a sample: the services read little of a statement
            editor_seed(f"case-{group}", 0, len(sql) // 2 + i, middle=sql)
            n += 1
    for name, sql in hostile_statements().items():
        editor_seed(f"hostile-{name}", 0, len(sql), middle=sql)
        n += 1
    q = HOSTILE_QUERY
    for name, args in {
        "chart-300": (9, 0, "CHART BAR ", q),                                  # 5 KB
        "chart-12000": (14, 65535, "CHART BAR ", q + ";"),                     # 160 KB
        "parens": (15, 20, "(", "1", ")"),
        "unclosed-parens": (15, 65535, "(", "a"),
        "open-quote": (15, 3, "(", "SELECT '"),
        "sum": (15, 65535, "1 + ", "1 FROM patients;"),
        "union": (12, 100, "SELECT 1 AS a UNION ALL ", "SELECT 1 AS a;"),
        "subqueries": (11, 65535, "(SELECT * FROM ", "patients", ") s"),
        "not": (15, 7, "NOT ", "TRUE;"),
        "case": (13, 9, "CASE WHEN TRUE THEN ", "1", " END"),
        "cte": (12, 30, "WITH c AS (SELECT sex FROM patients) ", "SELECT * FROM c;"),
        "over-the-cap": (15, 65535, "SELECT 1; ", "SEL"),
        "statements": (10, 4, "SELECT age FROM patients; ", "SELECT a"),
        "multibyte": (13, 333, "é😀 ", "SELECT pat"),
    }.items():
        editor_seed(f"hostile-{name}", *args)
        n += 1
    return n


def glob_seeds():
    cases = {
        "star": ("*", ""),
        "prefix": ("SELECT*", "SELECT 1"),
        "contains": ("*count*", "select count(*)"),
        "question": ("a?c", "abc"),
        "question-miss": ("a?c", "abbc"),
        "multibyte": ("é?*", "éü😀"),
        # Issue 20, finding 10 (scaled to the fuzzer's 8 KB): backtracking traps.
        "trap": ("*" + "A" * 1000 + "B", "A" * 6000),
        "many-stars": ("*A" * 500 + "B", "A" * 6000),
        "star-question": ("*?" * 1000, "x" * 5000),
        "no-text": ("*" * 8000, ""),
        "invalid-utf8": ("\udcc3*", "x"),
    }
    for name, (pattern, text) in cases.items():
        data = pattern.encode("utf-8", "surrogateescape") + SEPARATOR + text.encode()
        write("history_glob", name, data)
    return len(cases)


TARGETS = {
    "sql_check": lambda args: sql_seeds() + hostile_sql_seeds(),
    "config": lambda args: config_seeds(args.demo_config),
    "wire_frames": lambda args: wire_seeds(),
    "editor_services": lambda args: editor_seeds(),
    "history_glob": lambda args: glob_seeds(),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-config", help="DIR/safe-data.toml written by `safe-data demo DIR`")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets (default: all)")
    args = ap.parse_args()
    for target in args.targets.split(","):
        print(f"{target}:", TARGETS[target](args))


if __name__ == "__main__":
    main()
