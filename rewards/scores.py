"""Per-item reward components that the join writes into every reward record."""

from __future__ import annotations


def co_score(clicked: bool, ordered: bool, v_click: float = 3.0, v_order: float = 4.0) -> float:
    """R_C&O (paper Eq.9) with the released code's values: order 4.0 > click 3.0 > nothing 0.

    The paper's prose lists "3, 4" in the other order; the authors' code gives the order the larger
    value, which is what an order meaning a stronger preference implies.
    """
    if ordered:
        return v_order
    if clicked:
        return v_click
    return 0.0
