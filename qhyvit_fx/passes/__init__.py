"""Graph passes, one transform per module: GraphModule in, GraphModule out.

Order used by :func:`qhyvit_fx.prepare`: ``cleanup`` → ``fold_bn`` → ``annotate`` →
``insert_observers``; :func:`qhyvit_fx.convert` then runs ``convert``.
"""
