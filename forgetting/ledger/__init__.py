"""The claims ledger: each claim of the paper, what we measured, and a verdict reached by the rules of
``data/ledger_rules.yaml`` (:mod:`forgetting.ledger.rules`)."""

from forgetting.ledger.claims import *  # noqa: F401,F403  (transitional: the rows move to the rule file)
from forgetting.ledger.claims import _claim_row  # noqa: F401
