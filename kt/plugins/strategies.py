"""Built-in transfer strategies, registered through the same hook as third-party ones."""

from functools import partial

import kt
from kt.strategies import CE, CRD, DKD, KL, KLDP, XEKL, XEKLMCL, AdaptConf, BiKD


@kt.hookimpl
def register_strategies(register):
    register("kl", KL)
    register("ce", CE)
    register("xekl", XEKL)
    register("kl_dp", KLDP)
    register("kl_dp_unsup", partial(KLDP, supervised=False))
    register("xekl_mcl", XEKLMCL)
    register("dkd", DKD)
    register("adaptconf", AdaptConf)
    register("crd", CRD)
    register("bikd", BiKD)
