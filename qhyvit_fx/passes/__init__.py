"""Graph passes, one transform per module: GraphModule in, GraphModule out.

Order used by :func:`qhyvit_fx.prepare`: ``unshare_modules`` → ``cleanup`` → ``fold_constants`` →
``functional_conv`` → ``conv1d_as_conv2d`` (together :func:`qhyvit_fx.api.layer_graph`) → ``fold_bn`` →
(bridge tagging, :mod:`qhyvit_fx.patterns`) → ``annotate`` → ``insert_observers``;
:func:`qhyvit_fx.convert` then runs ``convert``.
"""
