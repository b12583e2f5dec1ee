"""Graph passes, one transform per module: GraphModule in, GraphModule out.

Order used by :func:`qhyvit_fx.prepare`: ``unshare_modules`` → ``cleanup`` → ``functional_conv`` → ``fold_bn`` →
(bridge tagging, :mod:`qhyvit_fx.patterns`) → ``annotate`` → ``insert_observers``;
:func:`qhyvit_fx.convert` then runs ``convert``.
"""
