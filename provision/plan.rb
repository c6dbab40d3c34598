# The Vagrant lab's plan: which VMs, which addresses. The Vagrantfile builds the lab from it and
# tests/unit/test_vagrant_plan.py prints it (`ruby provision/plan.rb N`), so both read one source.
require "ipaddr"
require "json"
require "securerandom"

module LbsyncLab
  BOX = "debian/bookworm64"
  # VirtualBox (6.1.28+) only allows host-only addresses in 192.168.56.0/21 unless configured.
  NETWORK = "192.168.56.0/24"
  LB_HOST = 10          # lb: 192.168.56.10, webN: 192.168.56.(10 + N)
  MAX_WEB = 50
  LB2_HOST = 9          # LB_NODES=2: lb2 at 192.168.56.9, and the pair's floating address (VIP),
  VIP_HOST = 100        # which keepalived moves between lb and lb2, at 192.168.56.100
  SECRETS = "provision/.secrets"   # made on the host, reaches every VM through /vagrant

  # WEB_NODES (default 2) web VMs; anything but a whole number in 1..MAX_WEB is an error.
  def self.web_count(value = ENV.fetch("WEB_NODES", "2"))
    count = Integer(value, 10) rescue nil
    return count if count&.between?(1, MAX_WEB)

    raise ArgumentError, "WEB_NODES=#{value.inspect}: expected a whole number in 1..#{MAX_WEB}"
  end

  # LB_NODES (default 1): 2 makes lb and lb2 a pair (keepalived, VRRP unicast between them).
  def self.lb_count(value = ENV.fetch("LB_NODES", "1"))
    return Integer(value, 10) if %w[1 2].include?(value)

    raise ArgumentError, "LB_NODES=#{value.inspect}: expected 1 or 2"
  end

  def self.ip(host)
    (IPAddr.new(NETWORK).to_range.first.to_i + host).then { |n| IPAddr.new(n, Socket::AF_INET).to_s }
  end

  # [{name:, role:, ip:, script:, args:}], the LB first so it provisions (and listens) first; with
  # LB_NODES=2, lb2 last: it joins lb, and both get the VIP and each other as VRRP peer.
  def self.nodes(count = web_count, mode = ENV.fetch("LB_MODE", "hook"), lbs = lb_count)
    raise ArgumentError, "LB_MODE=#{mode.inspect}: expected hook or run" unless %w[hook run].include?(mode)

    secrets = "/vagrant/#{SECRETS}"
    lb = lb_node("lb", LB_HOST, mode, secrets)
    webs = (1..count).map do |n|
      node = { name: "web#{n}", role: "web", ip: ip(LB_HOST + n), script: "provision/web.sh" }
      node.merge(args: ["--name", node[:name], "--ip", node[:ip], "--join", lb[:ip], "--secrets", secrets])
    end
    return [lb] + webs if lbs == 1

    lb2 = lb_node("lb2", LB2_HOST, mode, secrets)
    lb2[:args] += ["--join", lb[:ip]]
    vip = "#{ip(VIP_HOST)}/#{IPAddr.new(NETWORK).prefix}"
    lb[:args] += ["--vip", vip, "--peer", lb2[:ip], "--priority", "100"]
    lb2[:args] += ["--vip", vip, "--peer", lb[:ip], "--priority", "90"]
    [lb] + webs + [lb2]
  end

  def self.lb_node(name, host, mode, secrets)
    node = { name: name, role: "lb", ip: ip(host), script: "provision/lb.sh" }
    node.merge(args: ["--name", name, "--ip", node[:ip], "--network", NETWORK, "--secrets", secrets, "--mode", mode])
  end

  # The gossip key (base64 of 32 random bytes, what `serf keygen` prints) and the RPC token,
  # made once on the host before any VM provisions: /vagrant is an rsync copy, so a key made
  # inside the LB VM would never reach the web VMs.
  def self.ensure_secrets(dir)
    Dir.mkdir(dir, 0o700) unless Dir.exist?(dir)
    secrets = { "serf.key" => SecureRandom.base64(32), "rpc.token" => SecureRandom.urlsafe_base64(32),
                "vrrp.pass" => SecureRandom.urlsafe_base64(6) }  # only `lb.sh --vip ... --vrrp-version 2` reads it
    secrets.each do |name, value|
      File.open(File.join(dir, name), File::WRONLY | File::CREAT | File::EXCL, 0o600) { |f| f.puts(value) }
    rescue Errno::EEXIST
      next
    end
  end
end

if $PROGRAM_NAME == __FILE__
  puts JSON.generate(network: LbsyncLab::NETWORK, box: LbsyncLab::BOX,
                     nodes: LbsyncLab.nodes(LbsyncLab.web_count(ARGV.fetch(0, ENV.fetch("WEB_NODES", "2")))))
end
