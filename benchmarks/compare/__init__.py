"""``bench compare``: is HEAD slower than BASE? Two conditions, as airspeed velocity decides.

A case regresses only when both hold: the ratio of medians, head / base seconds per call,
exceeds ``1 + threshold`` (default 10%), and a two-sided Mann-Whitney U test on the raw
per-repeat samples rejects "same distribution" at ``alpha`` (default 0.002). A single noisy
repeat can move neither a median nor a rank test much, which is what makes this safe to gate
CI on.

``stats`` holds that rule and the matching of results; ``format`` the table; ``git`` finds
and exports revisions; ``workers`` speaks to the per-revision ``speed_worker`` processes and
interleaves their repeats; ``revisions`` measures two revisions now and writes the outcome.
"""
