"""The member side of the protocol, shared by a worker and by a sub-federation's coordinator (a member
of its parent federation, docs/methods.md section 5): the client with backoff (`client`), the
hash-checked copy of the federation's model (`download`), the model a member trains (`replica`), and
encoding and delivering an update with error feedback (`upload`)."""
