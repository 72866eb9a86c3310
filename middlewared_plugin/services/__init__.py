"""One module per API namespace. ALL_SERVICES is what the server registers, in start order."""
from middlewared_plugin.services.auth import AuthService
from middlewared_plugin.services.core import CoreService
from middlewared_plugin.services.keychain import KeychainCredentialService
from middlewared_plugin.services.pool import PoolDatasetService, PoolService, PoolSnapshotService
from middlewared_plugin.services.replication import ReplicationConfigService, ReplicationService
from middlewared_plugin.services.snapshottask import PeriodicSnapshotTaskService

ALL_SERVICES = [
    CoreService, AuthService, KeychainCredentialService, PoolService, PoolDatasetService, PoolSnapshotService,
    PeriodicSnapshotTaskService, ReplicationService, ReplicationConfigService,
]
