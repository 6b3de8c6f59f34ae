"""Every core and every node: worker processes on one machine (a parent that supervises them and keeps the
machine's stream registry), the Redis registry between nodes, and the edge copies and forwarded requests by
which any worker or node serves any stream."""
