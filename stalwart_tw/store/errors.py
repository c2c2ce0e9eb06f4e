"""
The exceptions of the store.
"""


class StoreError(Exception):
    """
    Base of the store's exceptions.
    """


class InvalidBatch(StoreError):
    """
    A WriteBatch names an unknown table or column, holds a value of a type a
    batch cannot carry, or could not be decoded from bytes.
    """


class BatchConflict(StoreError):
    """
    A batch was built on state that has since changed: an account it writes
    had moved past the modseq the batch expected. Nothing of it was applied;
    the caller rebuilds it from fresh state or fails the request.

    @ivar accounts: the ids of the accounts whose modseq had moved.
    """

    def __init__(self, accounts):
        self.accounts = tuple(accounts)
        super().__init__(f"batch built on stale state of accounts {list(self.accounts)}")


class NodeStopping(Exception):
    """
    The node is shutting down and accepts no new write.

    Not a L{StoreError}: the store is fine, the node refuses the write before
    it reaches it. It lives here, beside the other ways a write can fail, so
    that the layers above the node (jmap/, writer.py) can name it without
    importing cluster/.
    """


class BlobMissing(StoreError):
    """
    A blob named by its hash has no file on this node.
    """
