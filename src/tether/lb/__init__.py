"""``tether lb``: load balancer configurations (HAProxy, nginx) that keep each upload on the
node that created it, from a cluster file. Routing only: correctness never depends on it."""
