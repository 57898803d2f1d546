"""The state-store contract against every backend in ``backends.STATE_BACKENDS``."""

from tests.contract.state_contract import StateStoreContract


class TestStateStores(StateStoreContract):
    pass
