"""Code fingerprints: docstrings and comments do not count, code does; the run code covers training."""

from forgetting.runs import RUN_CODE, code_fingerprint, code_only


def test_run_fingerprint_ignores_docstrings_and_comments_but_not_code():
    source = 'def f(x):\n    """Square."""\n    return x * x  # fast\n'
    assert code_only(source) == code_only('def f(x):\n    """Square x (more words)."""\n    return x * x\n')
    assert code_only(source) == code_only("def f(x):\n    return x * x\n")
    assert code_only(source) != code_only('def f(x):\n    """Square."""\n    return x * x * 1\n')
    assert code_only('"""Module."""\n') == code_only('"""Other."""\n')  # a docstring-only module


def test_the_run_code_covers_the_loop_the_hooks_and_the_mitigations():
    assert {"train", "hooks.py", "mitigations", "spec.py", "runs/run.py", "models/finetune.py"} <= set(RUN_CODE)
    assert code_fingerprint(("train",)) != code_fingerprint(("hooks.py",))
    assert code_fingerprint() == code_fingerprint(RUN_CODE) and len(code_fingerprint()) == 8
