# Node pool on AWS EC2: node_count instances booted by infra/cloud-init/node.yaml.

terraform {
  required_version = ">= 1.4"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

data "aws_ami" "node" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = var.ami_owners

  filter {
    name   = "name"
    values = [var.ami_name_filter]
  }
}

locals {
  ami_id = var.ami_id != null ? var.ami_id : data.aws_ami.node[0].id
  tags = {
    Service   = var.service
    Region    = var.region_name
    ManagedBy = "xplane"
  }
}

resource "aws_instance" "node" {
  count = var.node_count

  ami                    = local.ami_id
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  vpc_security_group_ids = var.security_group_ids
  key_name               = var.key_name

  user_data = templatefile("${path.module}/../../../cloud-init/node.yaml", {
    api_url         = var.api_url
    bootstrap_token = var.bootstrap_token
    service         = var.service
    region          = var.region_name
    node_id         = "${var.region_name}-${count.index}"
    agent_version   = var.agent_version
  })
  # A new boot script is for new nodes; the running ones keep serving.
  user_data_replace_on_change = false

  metadata_options {
    http_tokens = "required"
  }

  tags = merge(local.tags, { Name = "${var.service}-${var.region_name}-${count.index}" })

  lifecycle {
    ignore_changes = [ami, user_data]
  }
}
