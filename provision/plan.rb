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
  SECRETS = "provision/.secrets"   # made on the host, reaches every VM through /vagrant

  # WEB_NODES (default 2) web VMs; anything but a whole number in 1..MAX_WEB is an error.
  def self.web_count(value = ENV.fetch("WEB_NODES", "2"))
    count = Integer(value, 10) rescue nil
    return count if count&.between?(1, MAX_WEB)

    raise ArgumentError, "WEB_NODES=#{value.inspect}: expected a whole number in 1..#{MAX_WEB}"
  end

  def self.ip(host)
    (IPAddr.new(NETWORK).to_range.first.to_i + host).then { |n| IPAddr.new(n, Socket::AF_INET).to_s }
  end

  # [{name:, role:, ip:, script:, args:}], the LB first so it provisions (and listens) first.
  def self.nodes(count = web_count, mode = ENV.fetch("LB_MODE", "hook"))
    raise ArgumentError, "LB_MODE=#{mode.inspect}: expected hook or run" unless %w[hook run].include?(mode)

    secrets = "/vagrant/#{SECRETS}"
    lb = { name: "lb", role: "lb", ip: ip(LB_HOST), script: "provision/lb.sh" }
    lb[:args] = ["--name", "lb", "--ip", lb[:ip], "--network", NETWORK, "--secrets", secrets, "--mode", mode]
    webs = (1..count).map do |n|
      node = { name: "web#{n}", role: "web", ip: ip(LB_HOST + n), script: "provision/web.sh" }
      node.merge(args: ["--name", node[:name], "--ip", node[:ip], "--join", lb[:ip], "--secrets", secrets])
    end
    [lb] + webs
  end

  # The gossip key (base64 of 32 random bytes, what `serf keygen` prints) and the RPC token,
  # made once on the host before any VM provisions: /vagrant is an rsync copy, so a key made
  # inside the LB VM would never reach the web VMs.
  def self.ensure_secrets(dir)
    Dir.mkdir(dir, 0o700) unless Dir.exist?(dir)
    secrets = { "serf.key" => SecureRandom.base64(32), "rpc.token" => SecureRandom.urlsafe_base64(32) }
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
