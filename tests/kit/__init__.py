"""The one test kit: builders, fakes and the real-parts harness shared by tests, lab and bench.

Imported as `kit`: pytest's `pythonpath` puts tests/ on sys.path; lab/env.sh and `make bench`
put it on PYTHONPATH. One module per job:
  paths       where things are in the checkout
  procs       Processes/Proc: children started in their own session, stopped by PID; require()
  net         free_port, connects, http_get, wait_until, HungServer
  records     record(): a member as Serf's RPC sends it (raw Addr); decoded(); web_records(n)
  source      ListSource: the in-memory MemberSource
  fake_serf   FakeSerf: the only fake of Serf (answering or scripted RPC server)
  fake_nginx  fake_nginx(), nginx_calls(), pipeline_settings(): the pipeline without nginx
  serfnode    start_serf(): a real `serf agent` on its own 127.x address; serf(), serf_members()
  nginx       write_prefix(): the one nginx layout; Nginx/start_nginx: a real nginx under a prefix
  lb          start_lb(mode="hook"|"run") -> LoadBalancer: nginx + LB agent + lbsync + web nodes
  labrun      running_lab(), Lab, RequestLoop: the lab driven through lab/*.sh
  hosts       Debian hosts in systemd-nspawn containers (its own docstring)
  lbhosts     an LB and web hosts provisioned from a wheel in those containers; a client loop
"""
