# Node pool on Alibaba Cloud ECS: node_count instances booted by infra/cloud-init/node.yaml.

terraform {
  required_version = ">= 1.4"

  required_providers {
    alicloud = {
      source  = "aliyun/alicloud"
      version = ">= 1.220"
    }
  }
}

data "alicloud_images" "node" {
  count       = var.image_id == null ? 1 : 0
  name_regex  = var.image_name_regex
  owners      = "system"
  most_recent = true
}

locals {
  image_id = var.image_id != null ? var.image_id : data.alicloud_images.node[0].images[0].id
  tags = {
    Service   = var.service
    Region    = var.region_name
    ManagedBy = "xplane"
  }
}

resource "alicloud_instance" "node" {
  count = var.node_count

  image_id        = local.image_id
  instance_type   = var.instance_type
  vswitch_id      = var.vswitch_id
  security_groups = var.security_group_ids
  key_name        = var.key_name
  instance_name   = "${var.service}-${var.region_name}-${count.index}"
  host_name       = "${var.service}-${var.region_name}-${count.index}"

  user_data = base64encode(templatefile("${path.module}/../../../cloud-init/node.yaml", {
    api_url         = var.api_url
    bootstrap_token = var.bootstrap_token
    service         = var.service
    region          = var.region_name
    node_id         = "${var.region_name}-${count.index}"
    agent_version   = var.agent_version
  }))

  tags = local.tags

  lifecycle {
    ignore_changes = [image_id, user_data]
  }
}
