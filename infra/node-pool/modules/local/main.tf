# Node pool on this machine: one real `xplane agent` process per node, on its own
# loopback address, for development and end-to-end tests. Uses only the built-in
# terraform_data resource, so it needs no provider download.

terraform {
  required_version = ">= 1.4"
}

locals {
  nodes = [
    for index in range(var.node_count) : {
      node_id = "${var.region_name}-${index}"
      address = "${var.address_prefix}.${index + 10}"
    }
  ]
}

resource "terraform_data" "node" {
  count = var.node_count

  # Destroy-time provisioners may only read self, so everything stop.sh needs is here.
  input = {
    node_id  = local.nodes[count.index].node_id
    address  = local.nodes[count.index].address
    pid_file = "${var.state_dir}/${local.nodes[count.index].node_id}.pid"
  }

  # A node whose agent would be started differently is a new node.
  triggers_replace = [
    var.service,
    var.region_name,
    var.api_url,
    var.agent_command,
    local.nodes[count.index].address,
    var.health_port,
  ]

  provisioner "local-exec" {
    command = "sh '${path.module}/start.sh'"
    environment = {
      AGENT_COMMAND = var.agent_command
      API_URL       = var.api_url
      SERVICE       = var.service
      REGION        = var.region_name
      NODE_ID       = self.input.node_id
      ADDRESS       = self.input.address
      HEALTH_PORT   = tostring(var.health_port)
      TOKEN_FILE    = var.token_file
      STATE_DIR     = var.state_dir
      PID_FILE      = self.input.pid_file
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "sh '${path.module}/stop.sh'"
    environment = {
      NODE_ID  = self.input.node_id
      PID_FILE = self.input.pid_file
    }
  }
}

# Every new revision CI applies (the runner passes the commit as var.revision) also
# restarts any agent of the pool that died: a crashed node's slot is filled again in
# place, like a cloud's auto-recovery. start.sh leaves live agents alone, and the same
# revision applied twice changes nothing.
resource "terraform_data" "revive" {
  count            = var.node_count
  triggers_replace = [var.revision]
  depends_on       = [terraform_data.node]

  provisioner "local-exec" {
    command = "sh '${path.module}/start.sh'"
    environment = {
      AGENT_COMMAND = var.agent_command
      API_URL       = var.api_url
      SERVICE       = var.service
      REGION        = var.region_name
      NODE_ID       = local.nodes[count.index].node_id
      ADDRESS       = local.nodes[count.index].address
      HEALTH_PORT   = tostring(var.health_port)
      TOKEN_FILE    = var.token_file
      STATE_DIR     = var.state_dir
      PID_FILE      = "${var.state_dir}/${local.nodes[count.index].node_id}.pid"
    }
  }
}
