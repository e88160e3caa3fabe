"""Analysis: the facts/verdict contract, the rule-based classifier and the pipeline that runs them."""
