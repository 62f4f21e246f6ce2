# ~/.bashrc: read by interactive bash shells.
HISTCONTROL=ignoreboth
PS1='\u@\h:\w\$ '
