# ~/.profile: read by login shells.
if [ -d "$HOME/bin" ]; then
    PATH="$HOME/bin:$PATH"
fi
