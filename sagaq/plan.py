"""The frozen plan of a saga: what `SagaQ.register` computes once and everything else reads.

    plan = saga.freeze()          # or saga.plan; plan_saga(saga) builds one without freezing
    plan.order, plan.ancestors, plan.after_pivot, plan.undoable, plan.forward, plan.compensation
    plan.forward_shape(remaining_steps), plan.compensation_shape(steps_to_undo)

The code lives in sagaq.definition (pure, no Celery) so that `Saga.freeze` can build it.
"""

from sagaq.definition.plan import SagaPlan, StepSets, plan_saga
from sagaq.definition.shape import Leaf, Par, Seq, Shape, edges, leaves

__all__ = ["Leaf", "Par", "SagaPlan", "Seq", "Shape", "StepSets", "edges", "leaves", "plan_saga"]
