"""Jupyter protocol conformance, through jupyter_kernel_test.

Each attribute below turns on one of jupyter_kernel_test's checks; an
attribute left empty skips its check, and its comment says why (see also
ARCHITECTURE.md, "Conformance test attributes left empty").
"""

from __future__ import annotations

import jupyter_kernel_test


class SafeDataKernelTests(jupyter_kernel_test.KernelTests):
    kernel_name = "safe-data-test"  # installed by conftest.py

    # kernel_info_reply.language_info
    language_name = "sql"
    file_extension = ".sql"

    # code_hello_world: left unset. The dialect has no statement that prints
    # to stdout; results are execute_result/display_data, never streams.
    # code_stderr: left unset for the same reason (no statement writes to
    # stderr; notices are part of the result, errors are `error` messages).

    completion_samples = [
        # A column of the table in scope.
        {"text": "SELECT sex FROM patients WHERE ag", "matches": {"age"}},
        # After FROM: table names.
        {"text": "SELECT * FROM pat", "matches": {"patients"}},
        # After an alias: that table's columns.
        {"text": "SELECT COUNT(*) FROM patients p WHERE p.ag", "matches": {"age"}},
        # Hidden columns (birth_date) do not exist, not even for completion.
        {"text": "SELECT COUNT(*) FROM patients WHERE birth", "matches": set()},
    ]

    complete_code_samples = ["SELECT 1;", "SHOW TABLES;", "SELECT 1; SELECT 2;", ""]
    incomplete_code_samples = [
        "SELECT 'abc",  # inside a string
        "SELECT (1 + ",  # an open parenthesis
        "SELECT 1",  # a statement without its `;`
    ]
    invalid_code_samples = ["SELECT 1);", "SELECT FROM WHERE;"]

    # A name that does not exist: an `error` output and an error reply.
    code_generate_error = "SELECT nope FROM patients;"

    # `result` is the exact text/plain of the execute_result. The first code
    # is also the one code_history_pattern matches.
    code_execute_result = [
        {"code": "SELECT 40 + 2 AS answer;", "result": "answer\n------\n    42\n(1 row)"},
        {"code": "SELECT 1 + 1 AS two;", "result": "two\n---\n  2\n(1 row)"},
        {
            # A public reference table: rows are released as they are.
            "code": "SELECT region, beds FROM regions ORDER BY region;",
            "result": (
                "region   beds\n"
                "-------  ----\n"
                "Central  9800\n"
                "East     3100\n"
                "North    5600\n"
                "South    6900\n"
                "West     5200\n"
                "(5 rows)"
            ),
        },
        {"code": "SELECT 1 + 1 AS two;", "mime": "text/html"},
        {"code": "SELECT 1 + 1 AS two;", "mime": "application/vnd.dataresource+json"},
    ]

    # Every statement of a cell but the last is sent as display_data.
    code_display_data = [
        {"code": "SHOW TABLES; SELECT 1;", "mime": "text/html"},
        {"code": "SHOW TABLES; SELECT 1;", "mime": "text/plain"},
        {"code": "SELECT 1 AS a; SELECT 2 AS b;", "mime": "application/vnd.dataresource+json"},
    ]

    # Must match exactly one distinct source of the history (the test asks
    # `unique=True` to give one entry): only "SELECT 40 + 2 AS answer;".
    code_history_pattern = "SELECT 4*"
    supported_history_operations = ("tail", "range", "search")

    # inspect of a table name returns its description.
    code_inspect_sample = "patients"

    # code_page_something: left unset. No statement opens the pager;
    # DESCRIBE returns a table as a result.
    # code_clear_output: left unset. No statement clears output.
