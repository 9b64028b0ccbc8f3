output "node_ids" {
  description = "Instance ids, in index order."
  value       = alicloud_instance.node[*].id
}

output "node_addresses" {
  description = "Private IP of every node."
  value       = alicloud_instance.node[*].private_ip
}
